"""`LLM`: the engine offline, as vLLM's `LLM` is written. Batch-caption a folder, run an eval set,
or embed the model in a program without HTTP.

    from monovl import LLM, SamplingParams

    llm = LLM("OpenGVLab/Mono-InternVL-2B", max_num_seqs=16)
    outputs = llm.chat([[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "photo.jpg"}},
        {"type": "text", "text": "Describe the image."}]}]], SamplingParams(temperature=0, max_tokens=64))
    print(outputs[0].outputs[0].text)

Every conversation (or prompt) of a call is added to one engine at once, which runs them with
continuous batching and its prefix and image caches, exactly as the server's engine does.
"""

from __future__ import annotations

import io
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from monovl.checkpoint import load_checkpoint, parse_device
from monovl.engine.inputs import ImageInput, PromptInputs
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.outputs import TokenLogprob
from monovl.engine.sampling_params import SamplingParams
from monovl.engine.settings import configured
from monovl.model.fast_path import DEFAULT as FAST_PATH_DEFAULT
from monovl.outputs import CompletionOutput, Logprob, RequestOutput
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.server.errors import APIError
from monovl.server.image_urls import decode_data_url

Message = dict[str, Any]
ImageSource = Image.Image | bytes | str | Path  # a PIL image, encoded bytes, a path or a data: URL
_ROLES = ("system", "user", "assistant")


class LLM:
    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        device: str = "auto",
        fast_path: str = FAST_PATH_DEFAULT,
        max_image_tiles: int | None = None,
        **settings: Any,
    ) -> None:
        """`model`: a checkpoint directory or hub id (None: the tiny demo checkpoint). `settings`:
        the engine's, named as `monovl serve`'s flags (`max_num_seqs=8`, `kv_cache_memory=4`),
        checked as they are. `max_image_tiles`: a cap on each image's tiles."""
        config: EngineConfig = configured(EngineConfig, settings)
        conflicts = config.conflicts(parse_device(device))
        if conflicts:
            raise ValueError("; ".join(conflicts))
        if max_image_tiles is not None and max_image_tiles < 1:
            raise ValueError(f"max_image_tiles must be at least 1, not {max_image_tiles}")
        loaded = load_checkpoint(model, dtype, device, fast_path)
        self.preprocessor = loaded.preprocessor
        self.engine = LLMEngine(loaded.model, loaded.tokens, config)
        self.max_image_tiles = max_image_tiles
        self._ids = itertools.count()

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Answer one conversation or a list of them. Messages as OpenAI's (`role`, `content` as text
        or parts); image parts: `{"type": "image_url", "image_url": {"url": data: URL or path}}` (with
        `detail` "low" for one tile) and `{"type": "image_pil", "image_pil": PIL.Image}`."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self._chat_prompt(c, add_generation_prompt) for c in conversations]  # type: ignore[arg-type]
        return self._run(prompts, sampling_params, use_tqdm)

    def generate(
        self,
        prompts: str | dict | Sequence[str | dict],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Complete prompts written by hand, without the chat template: strings, or
        `{"prompt": text with an <image> for each image, "multi_modal_data": {"image": one or a list}}`."""
        items = [prompts] if isinstance(prompts, str | dict) else list(prompts)
        return self._run([self._raw_prompt(item) for item in items], sampling_params, use_tqdm)

    def close(self) -> None:
        self.engine.close()

    # ------------------------------------------------------------------ prompts
    def _chat_prompt(self, conversation: list[Message], add_generation_prompt: bool) -> PromptInputs:
        messages, images = [], []
        for k, message in enumerate(conversation):
            role, content = message.get("role"), message.get("content")
            if role not in _ROLES:
                raise ValueError(f"message {k}: role must be one of {', '.join(_ROLES)}, not {role!r}")
            if content is None or isinstance(content, str):
                messages.append(ChatMessage.text(role, content or ""))
                continue
            parts: list[TextPart | ImagePart] = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append(TextPart(part["text"]))
                elif kind in ("image_url", "image_pil") and role == "user":
                    images.append(self._image_part(part))
                    parts.append(ImagePart(len(images) - 1))
                else:
                    raise ValueError(f"message {k}: a {role} message cannot hold a part of type {kind!r}")
            messages.append(ChatMessage(role, tuple(parts)))
        return self.preprocessor.process(messages, images, add_generation_prompt)

    def _raw_prompt(self, item: str | dict) -> PromptInputs:
        if isinstance(item, str):
            return self.preprocessor.process_raw(item, [])
        images = (item.get("multi_modal_data") or {}).get("image", [])
        images = images if isinstance(images, list | tuple) else [images]
        return self.preprocessor.process_raw(item["prompt"], [self._image(image) for image in images])

    def _image_part(self, part: dict) -> ImageInput:
        if part["type"] == "image_pil":
            return self._image(part["image_pil"])
        url = part["image_url"]
        if isinstance(url, str):
            return self._image(url)
        return self._image(url["url"], 1 if url.get("detail") == "low" else None)

    def _image(self, source: ImageSource, max_tiles: int | None = None) -> ImageInput:
        return self.preprocessor.load_image(image_bytes(source), max_tiles, self.max_image_tiles)

    # ------------------------------------------------------------------ the run
    def _run(
        self,
        prompts: list[PromptInputs],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        params = _per_prompt(sampling_params, len(prompts))
        results: dict[str, RequestOutput] = {}
        try:
            for prompt, p in zip(prompts, params, strict=True):
                request_id = str(next(self._ids))
                results[request_id] = _empty_output(request_id, prompt, p)
                self.engine.add_request(request_id, prompt, p)
            with tqdm(total=len(prompts), disable=not use_tqdm, desc="Processed prompts", unit="prompt") as bar:
                while self.engine.has_unfinished():
                    for output in self.engine.step():
                        if self._take(results[output.request_id], output):
                            bar.update(1)
        except BaseException:
            for request_id in results:  # the engine stays usable for the next call
                self.engine.abort_request(request_id)
            raise
        return list(results.values())

    def _take(self, result: RequestOutput, output) -> bool:
        """Add an engine output to its request's result; True when that finished the request."""
        completion = result.outputs[output.index]
        completion.text += output.new_text
        completion.token_ids += output.new_token_ids
        if completion.logprobs is not None:
            for logprob in output.new_logprobs:
                completion.logprobs.append(self._logprobs(logprob))
                completion.cumulative_logprob = (completion.cumulative_logprob or 0.0) + logprob.logprob
        result.num_cached_tokens = output.num_cached_tokens
        if not output.finished:
            return False
        if output.finish_reason == "error":
            raise RuntimeError(f"request {result.request_id} failed: {output.error}")
        completion.finish_reason = output.finish_reason
        result.finished = all(c.finish_reason is not None for c in result.outputs)
        return result.finished

    def _logprobs(self, logprob: TokenLogprob) -> dict[int, Logprob]:
        """vLLM's shape: the chosen token and the top alternatives by id, each with its rank."""
        decode = self.preprocessor.tokenizer.decode
        found = {
            token: Logprob(value, rank, decode([token], skip_special_tokens=False))
            for rank, (token, value) in enumerate(logprob.top_logprobs, start=1)
        }
        if logprob.token_id not in found:
            found[logprob.token_id] = Logprob(
                logprob.logprob, None, decode([logprob.token_id], skip_special_tokens=False)
            )
        return found


def image_bytes(source: ImageSource) -> bytes:
    """An image's encoded bytes: a PIL image as PNG (lossless, so its pixels are the ones tiled),
    a data: URL decoded, a path read."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.convert("RGB").save(buffer, format="PNG")  # RGB first: what decoding would make of it
        return buffer.getvalue()
    if isinstance(source, bytes):
        return source
    text = str(source)
    if text.startswith("data:"):
        try:  # the server's reading of a data: URL (an image type, base64), without its size limit
            return decode_data_url(text, sys.maxsize, "image_url")
        except APIError as error:
            raise ValueError(error.message) from None
    if text.startswith(("http://", "https://")):
        raise ValueError("LLM does not fetch image URLs: pass the image's bytes, a path or a PIL image")
    return Path(text.removeprefix("file://")).read_bytes()


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise ValueError(f"{len(params)} sampling params for {count} prompts")
    return list(params)


def _empty_output(request_id: str, prompt: PromptInputs, params: SamplingParams) -> RequestOutput:
    with_logprobs = params.logprobs is not None
    completions = [
        CompletionOutput(k, "", [], 0.0 if with_logprobs else None, [] if with_logprobs else None, None)
        for k in range(params.n)
    ]
    return RequestOutput(request_id, prompt.prompt, list(prompt.token_ids), completions)
