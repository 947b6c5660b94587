"""Chat messages and image bytes in, token ids and image tiles out: everything before the engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from monovl.engine.inputs import ImageInput, PromptInputs
from monovl.model.config import ModelConfig
from monovl.preprocessing.chat_template import (
    IMG_CONTEXT,
    STOP_TOKENS,
    ChatMessage,
    ImagePart,
    image_block,
    render_prompt,
)
from monovl.preprocessing.image_decode import MAX_IMAGE_PIXELS, decode_image
from monovl.preprocessing.tiling import tile_image, tiles_to_pixels
from monovl.preprocessing.tokenizer import Tokenizer

IMAGE_PLACEHOLDER = "<image>"  # where an image goes in a prompt written without the chat template


class Preprocessor:
    def __init__(self, checkpoint_dir: Path, config: ModelConfig, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.config = config
        self.tokenizer = Tokenizer(checkpoint_dir)
        self.max_image_pixels = max_image_pixels
        self.img_context_id = self.tokenizer.token_id(IMG_CONTEXT)
        self.stop_token_ids = _stop_token_ids(self.tokenizer, checkpoint_dir)

    def max_tiles(self, requested: int | None = None, limit: int | None = None) -> int:
        """The one tile cap: the checkpoint's max_dynamic_patch, lowered by the server's limit and by
        the request (never below the checkpoint's min_dynamic_patch); 1 without dynamic tiling."""
        if not self.config.dynamic_image_size:
            return 1
        cap = self.config.max_dynamic_patch
        for lower in (limit, requested):
            if lower:
                cap = min(cap, lower)
        return max(self.config.min_dynamic_patch, cap)

    def load_image(self, data: bytes, max_tiles: int | None = None, limit: int | None = None) -> ImageInput:
        """Decode and tile; max_tiles: what the request asks for; limit: the server's cap."""
        image = decode_image(data, self.max_image_pixels)
        cfg = self.config
        cap = self.max_tiles(max_tiles, limit)
        lo = min(cfg.min_dynamic_patch, cap)
        tiles = tile_image(image, lo, cap, cfg.image_size, cfg.use_thumbnail)
        digest = hashlib.sha256(data)
        digest.update(f"|tiles {lo}-{cap} size {cfg.image_size} thumb {cfg.use_thumbnail}".encode())
        return ImageInput(digest.hexdigest(), tiles_to_pixels(tiles, cfg.image_size))

    def process(
        self, messages: list[ChatMessage], images: list[ImageInput], add_generation_prompt: bool = True
    ) -> PromptInputs:
        used = sorted(p.index for m in messages for p in m.parts if isinstance(p, ImagePart))
        if used != list(range(len(images))):
            raise ValueError(f"image parts {used} do not match the {len(images)} images given")
        image_tokens = [self.config.num_image_token * im.num_tiles for im in images]
        prompt = render_prompt(messages, image_tokens, add_generation_prompt)
        token_ids = self.tokenizer.encode(prompt)
        return PromptInputs(prompt, token_ids, images, self._image_spans(token_ids, images))

    def process_raw(self, prompt: str, images: list[ImageInput]) -> PromptInputs:
        """A prompt written by hand, without the chat template: each `<image>` in it is where the next
        image goes (as vLLM's InternVL prompts write it)."""
        pieces = prompt.split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 != len(images):
            raise ValueError(
                f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders for {len(images)} images"
            )
        blocks = [image_block(self.config.num_image_token * im.num_tiles) for im in images]
        text = pieces[0] + "".join(block + piece for block, piece in zip(blocks, pieces[1:], strict=True))
        token_ids = self.tokenizer.encode(text)
        return PromptInputs(text, token_ids, images, self._image_spans(token_ids, images))

    def _image_spans(self, token_ids: list[int], images: list[ImageInput]) -> list[tuple[int, int]]:
        spans, k = [], 0
        while k < len(token_ids):
            if token_ids[k] != self.img_context_id:
                k += 1
                continue
            start = k
            while k < len(token_ids) and token_ids[k] == self.img_context_id:
                k += 1
            spans.append((start, k))
        expected = [self.config.num_image_token * im.num_tiles for im in images]
        if [end - start for start, end in spans] != expected:
            # Literal "<IMG_CONTEXT>" text in a message would add tokens no image backs.
            raise ValueError("the prompt's image tokens do not match its images (is <IMG_CONTEXT> in the text?)")
        return spans


def _stop_token_ids(tokenizer: Tokenizer, checkpoint_dir: Path) -> list[int]:
    """The template's stop tokens and any eos_token_id of generation_config.json."""
    ids = [tokenizer.token_id(t) for t in STOP_TOKENS]
    path = Path(checkpoint_dir) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        for token_id in eos if isinstance(eos, list) else [eos]:
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
    return ids
