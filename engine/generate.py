"""Generate for one prompt with the batched model interface: a prefill step, then decode steps.

This is the offline path behind `monovl generate`; it drives `MonoInternVL.forward` with the same
`ForwardBatch` and paged KV cache that the batched engine uses, with a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.inputs import PromptInputs
from engine.sampler import SamplingParams, TokenLogprob, sample, token_logprob
from model.forward_batch import ForwardBatch, KVCache
from model.mono_internvl import MonoInternVL

BLOCK_SIZE = 16


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str  # "stop" or "length"


def visual_embeddings(model: MonoInternVL, inputs: PromptInputs) -> torch.Tensor | None:
    """[image tokens, hidden]: every image's tiles embedded, in prompt order."""
    if not inputs.images:
        return None
    rows = [model.embed_images(im.pixel_values.to(model.device)).flatten(0, 1) for im in inputs.images]
    return torch.cat(rows)


@torch.inference_mode()
def generate(
    model: MonoInternVL, inputs: PromptInputs, params: SamplingParams, stop_token_ids: list[int], img_context_id: int
) -> GenerationResult:
    device = model.device
    prompt_len = inputs.num_tokens
    num_blocks = -(-(prompt_len + params.max_tokens) // BLOCK_SIZE)
    kv_cache = KVCache.allocate(model.config.llm, num_blocks, BLOCK_SIZE, model.dtype, device)
    block_tables = torch.arange(num_blocks, device=device)[None]
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)

    ids = torch.tensor(inputs.token_ids, device=device)
    positions = torch.arange(prompt_len, device=device)
    batch = ForwardBatch(
        input_ids=ids,
        positions=positions,
        visual_mask=ids == img_context_id,
        visual_embeds=visual_embeddings(model, inputs),
        slot_mapping=positions,
        block_tables=block_tables,
        query_lens=[prompt_len],
        seq_lens=[prompt_len],
        rope_lens=torch.full_like(positions, prompt_len),
    )
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] = []
    while True:
        logits = model.compute_logits(model(batch, kv_cache)[-1:])[0]
        token = sample(logits, params, generator)
        token_ids.append(token)
        logprobs.append(token_logprob(logits, token, params.logprobs))
        if token in stop_token_ids:
            return GenerationResult(token_ids, logprobs, "stop")
        if len(token_ids) >= params.max_tokens:
            return GenerationResult(token_ids, logprobs, "length")
        position = torch.tensor([prompt_len + len(token_ids) - 1], device=device)
        batch = ForwardBatch(
            input_ids=torch.tensor([token], device=device),
            positions=position,
            visual_mask=torch.zeros(1, dtype=torch.bool, device=device),
            visual_embeds=None,
            slot_mapping=position,
            block_tables=block_tables,
            query_lens=[1],
            seq_lens=[int(position) + 1],
            rope_lens=position + 1,
        )
