"""One forward per step: lay the scheduled chunks out as a flat `ForwardBatch`, run the model,
and return logits for the requests that sample (and the prompt logprobs of those that ask)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from monovl.engine.cuda_graphs import DecodeGraphs
from monovl.engine.inputs import ImageInput
from monovl.engine.outputs import TokenLogprob
from monovl.engine.request import Request
from monovl.engine.sampler import token_logprobs
from monovl.engine.scheduler import ScheduledChunk
from monovl.engine.step_layout import StepLayout, lay_out
from monovl.engine.vision_cache import VisionCache
from monovl.model.forward_batch import DecodeKernel, DecodeRows, ExpertRows, ForwardBatch, KVCache
from monovl.model.mono_internvl import MonoInternVL
from monovl.model.paged_attention import attend_together, padded_decode
from monovl.model.pixel_normalization import normalize_tiles

# Prompt positions whose logits are made at once: a long prompt's full logits would not fit in memory.
PROMPT_LOGITS_SLICE = 512


@dataclass(frozen=True)
class PromptLogprobs:
    request: Request
    start: int  # the prompt position of the first entry
    logprobs: list[TokenLogprob]  # of the tokens at start+1, start+2, ...


@dataclass(frozen=True)
class StepLogits:
    sample: torch.Tensor  # [sampling chunks, vocab] float32, in chunk order
    prompt: list[PromptLogprobs] = field(default_factory=list)


class DeviceError(RuntimeError):
    """The device no longer runs work (a sticky CUDA error, a lost GPU): no request can be served."""


class ModelRunner:
    def __init__(
        self,
        model: MonoInternVL,
        kv_cache: KVCache,
        img_context_id: int,
        vision_cache: VisionCache,
        decode_kernel: DecodeKernel | None = None,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        """decode_kernel: the paged decode kernel for one-token rows (None: the torch path);
        graphs: the CUDA graphs that replay whole decode steps (None: every step eager)."""
        self.model = model
        self.decode_kernel = decode_kernel
        self.graphs = graphs
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.img_context_id = img_context_id
        self.vision_cache = vision_cache

    def check_device(self) -> None:
        """Raise DeviceError unless the device still computes. After a failed step: a CUDA error such as
        a device-side assert is sticky, every later call fails, and only a new process recovers."""
        device = self.model.device
        try:
            probe = torch.ones(2, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ok = probe.sum().item() == 2
        except Exception as error:
            raise DeviceError(f"the {device} device no longer runs work: {error}") from error
        if not ok:
            raise DeviceError(f"the {device} device computes wrong results")

    @torch.inference_mode()
    def execute(self, chunks: list[ScheduledChunk]) -> StepLogits:
        layout = lay_out(chunks, self.block_size, self.img_context_id)
        if self.graphs is not None and self.graphs.fits(layout):
            return StepLogits(self.graphs.run(layout))  # every chunk samples: every row's logits are wanted
        batch = self.build_batch(chunks, layout)
        hidden = self.model(batch, self.kv_cache)
        rows = torch.tensor(layout.logits_indices, dtype=torch.long, device=hidden.device)
        return StepLogits(self.model.compute_logits(hidden[rows]), self.prompt_logprobs(chunks, hidden))

    def prompt_logprobs(self, chunks: list[ScheduledChunk], hidden: torch.Tensor) -> list[PromptLogprobs]:
        """For each chunk that asks: the logprob of every prompt token it predicts (position p's
        logits give the token at p + 1), with the top k."""
        found, offset = [], 0
        for chunk in chunks:
            request = chunk.request
            start = request.num_computed_tokens
            end = min(start + chunk.num_tokens, request.num_prompt_tokens - 1)  # the last predicts no prompt token
            if request.wants_prompt_logprobs and end > start:
                k = request.params.prompt_logprobs or 0
                logprobs: list[TokenLogprob] = []
                for at in range(start, end, PROMPT_LOGITS_SLICE):
                    stop = min(at + PROMPT_LOGITS_SLICE, end)
                    logits = self.model.compute_logits(hidden[offset + at - start : offset + stop - start])
                    logprobs += token_logprobs(logits, request.token_ids[at + 1 : stop + 1], k)
                found.append(PromptLogprobs(request, start, logprobs))
            offset += chunk.num_tokens
        return found

    def build_batch(self, chunks: list[ScheduledChunk], layout: StepLayout) -> ForwardBatch:
        """The step's flat batch on the model's device."""
        device = self.model.device
        # One host-to-device copy for the per-token columns; each copy costs a round trip on CUDA.
        columns = torch.from_numpy(
            np.array([layout.ids, layout.positions, layout.slots, layout.rope_lens], dtype=np.int64)
        ).to(device)
        visual = any(layout.visual)
        tables = torch.from_numpy(layout.tables).to(device)
        return ForwardBatch(
            input_ids=columns[0],
            positions=columns[1],
            expert_rows=ExpertRows.of(layout.visual, device) if visual else None,
            visual_embeds=self.visual_embeds(chunks) if visual else None,
            slot_mapping=columns[2],
            block_tables=tables,
            query_lens=layout.query_lens,
            seq_lens=layout.seq_lens,
            rope_lens=columns[3] if max(layout.rope_lens) > self.model.config.llm.max_position_embeddings else None,
            positions_end=max(layout.positions) + 1,
            decode=self.decode_rows(layout, tables),
        )

    def decode_rows(self, layout: StepLayout, tables: torch.Tensor) -> DecodeRows | None:
        """The one-token requests, for a decode kernel to serve in one call; without one (the torch
        path), `padded_decode` for rows of alike context lengths, else None (each attends alone)."""
        requests = [b for b, n in enumerate(layout.query_lens) if n == 1]
        kernel = self.decode_kernel
        if kernel is None:
            lengths = [layout.seq_lens[b] for b in requests]
            _, _, _, kv_heads, head_dim = self.kv_cache.key.shape
            if not attend_together(lengths, kv_heads, head_dim, self.kv_cache.key.element_size()):
                return None
            kernel, tables = padded_decode, tables[:, : -(-max(lengths) // self.block_size)]
        if not requests:
            return None
        device = tables.device
        # One copy: the requests' token rows (their query starts) and their context lengths.
        starts = np.cumsum([0, *layout.query_lens[:-1]])
        host = np.array([starts[requests], [layout.seq_lens[b] for b in requests]], dtype=np.int64)
        rows, seq_lens = torch.from_numpy(host).to(device)
        if len(requests) == len(layout.query_lens):  # all decode: the rows are the batch
            return DecodeRows(kernel, requests, rows, tables, seq_lens.to(torch.int32))
        index = torch.tensor(requests, device=device)
        return DecodeRows(kernel, requests, rows, tables[index], seq_lens.to(torch.int32))

    def visual_embeds(self, chunks: list[ScheduledChunk]) -> torch.Tensor | None:
        """The embedding rows of the image tokens in this step, in batch order."""
        needed: list[tuple[ImageInput, int, int]] = []
        for chunk in chunks:
            request = chunk.request
            start = request.num_computed_tokens
            end = start + chunk.num_tokens
            for image, (lo, hi) in zip(request.prompt.images, request.prompt.image_spans, strict=True):
                if lo < end and hi > start:
                    needed.append((image, max(lo, start) - lo, min(hi, end) - lo))
        if not needed:
            return None
        embeds = self.embed(image for image, _, _ in needed)
        return torch.cat([embeds[image.content_hash][a:b] for image, a, b in needed])

    def embed(self, images) -> dict[str, torch.Tensor]:
        """Embeddings [tiles * tokens per tile, hidden] by hash; the missing ones in one batched call."""
        found: dict[str, torch.Tensor] = {}
        missing: dict[str, ImageInput] = {}
        for image in images:
            if image.content_hash in found or image.content_hash in missing:
                continue
            cached = self.vision_cache.get(image.content_hash)
            if cached is None:
                missing[image.content_hash] = image
            else:
                found[image.content_hash] = cached
        if missing:
            pixels = torch.cat([im.pixels for im in missing.values()]).to(self.model.device)
            tiles = self.model.embed_images(normalize_tiles(pixels))
            for image, rows in zip(
                missing.values(), tiles.split([im.num_tiles for im in missing.values()]), strict=True
            ):
                embeds = rows.flatten(0, 1)
                found[image.content_hash] = embeds
                self.vision_cache.put(image.content_hash, embeds)
        return found
