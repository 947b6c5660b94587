"""A step's scheduled chunks as flat host-side columns: the one walk over the requests' tokens.

The model runner turns a layout into device tensors (`ForwardBatch`); a CUDA-graph decode step
copies it straight into the graph's static buffers. Built with plain lists, as each request holds
its tokens and block table as lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monovl.engine.scheduler import ScheduledChunk


@dataclass(frozen=True)
class StepLayout:
    ids: list[int]  # [T] token ids, request after request
    positions: list[int]  # [T] each token's index in its sequence
    rope_lens: list[int]  # [T] the sequence length that sets dynamic-NTK scaling for the token
    visual: list[bool]  # [T] True at a prompt's <IMG_CONTEXT> tokens
    slots: list[int]  # [T] block * block_size + offset where the token's K/V go
    query_lens: list[int]  # [B] tokens of each request in this step
    seq_lens: list[int]  # [B] context length of each request after this step
    logits_indices: list[int]  # token rows whose logits are sampled
    tables: np.ndarray  # [B, longest table] int64 block tables, zero-padded

    @property
    def decodes_only(self) -> bool:
        """One token a request, every one of them sampled: the shape a CUDA graph replays."""
        return len(self.ids) == len(self.seq_lens) == len(self.logits_indices)


def lay_out(chunks: list[ScheduledChunk], block_size: int, img_context_id: int) -> StepLayout:
    ids, positions, rope_lens, visual, slots = [], [], [], [], []
    query_lens, seq_lens, logits_indices = [], [], []
    for chunk in chunks:
        request = chunk.request
        start = request.num_computed_tokens
        end = start + chunk.num_tokens
        prompt_len = request.num_prompt_tokens
        table = request.block_table
        for pos in range(start, end):
            token = request.token_ids[pos]
            ids.append(token)
            positions.append(pos)
            rope_lens.append(max(pos + 1, prompt_len))
            visual.append(token == img_context_id and pos < prompt_len)
            slots.append(table[pos // block_size] * block_size + pos % block_size)
        query_lens.append(chunk.num_tokens)
        seq_lens.append(end)
        if chunk.samples:
            logits_indices.append(len(ids) - 1)
    # Through numpy, not torch.tensor of nested lists, which walks them element by element
    # (benchmarks/host_overhead.py times both).
    tables = np.zeros((len(chunks), max(len(c.request.block_table) for c in chunks)), dtype=np.int64)
    for row, chunk in enumerate(chunks):
        tables[row, : len(chunk.request.block_table)] = chunk.request.block_table
    return StepLayout(ids, positions, rope_lens, visual, slots, query_lens, seq_lens, logits_indices, tables)
