"""What one forward pass needs to know about its flat batch of tokens, and the paged KV cache.

The engine builds one `ForwardBatch` per step; the model reads it and never keeps it. Requests
are laid out back to back: request `b` owns tokens `query_start_loc[b]:query_start_loc[b+1]`,
which are the last `query_lens[b]` of its `seq_lens[b]` context tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from monovl.model.config import LLMConfig


@dataclass
class KVCache:
    """Paged K and V for every layer: [layers, num_blocks, block_size, kv_heads, head_dim]."""

    key: torch.Tensor
    value: torch.Tensor

    @classmethod
    def allocate(
        cls,
        config: LLMConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (config.num_hidden_layers, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        # Zeroed, so the whole pool is resident from the start: memory stays flat as blocks come into use.
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def num_blocks(self) -> int:
        return self.key.shape[1]

    @property
    def block_size(self) -> int:
        return self.key.shape[2]

    @staticmethod
    def bytes_per_block(config: LLMConfig, block_size: int, dtype: torch.dtype) -> int:
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
        return per_token * block_size * torch.empty(0, dtype=dtype).element_size()


class ExpertRows(NamedTuple):
    """Which token rows take which expert; found once per forward on the host, used by every layer."""

    visual: torch.Tensor  # rows of <IMG_CONTEXT> tokens -> feed_forward_ve
    text: torch.Tensor  # all other rows -> feed_forward
    order: torch.Tensor  # text rows then visual rows: the grouped GEMM's token order
    offsets: torch.Tensor  # [2] int32, where the text group and the visual group end in `order`

    @classmethod
    def of(
        cls, visual: Sequence[bool] | np.ndarray | torch.Tensor, device: torch.device | str = "cpu"
    ) -> ExpertRows | None:
        """From the host's mask of visual rows, in one copy to the device; None when no row is visual
        (the layers then skip the split)."""
        mask = np.asarray(visual, dtype=bool)
        if not mask.any():
            return None
        text, image = np.flatnonzero(~mask), np.flatnonzero(mask)
        packed = torch.from_numpy(np.concatenate([text, image, [len(text), len(mask)]])).to(device)
        order = packed[: len(mask)]
        return cls(order[len(text) :], order[: len(text)], order, packed[len(mask) :].to(torch.int32))


# (q, key_cache, value_cache, block_tables, seq_lens) -> out: one query per request, K/V read in place
DecodeKernel = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class DecodeRows:
    """The requests of a step that decode one token, for a kernel that serves them in one launch."""

    kernel: DecodeKernel
    requests: list[int]  # their indices in the batch
    token_rows: torch.Tensor  # [D] their token rows in the flat batch
    block_tables: torch.Tensor  # [D, max_blocks]
    seq_lens: torch.Tensor  # [D] int32


@dataclass(frozen=True)
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, token index in its sequence
    expert_rows: ExpertRows | None  # the <IMG_CONTEXT> rows and the rest; None: every row is text
    visual_embeds: torch.Tensor | None  # [V, hidden], one row for each of expert_rows.visual, in order
    slot_mapping: torch.Tensor  # [T] int64, block * block_size + offset where each token's K/V go
    block_tables: torch.Tensor  # [B, max_blocks] int64
    query_lens: list[int]  # [B] tokens of each request in this step
    seq_lens: list[int]  # [B] context length of each request after this step
    rope_lens: torch.Tensor | None = None  # [T] sequence length that sets dynamic-NTK scaling; None: none past it
    positions_end: int | None = None  # 1 + the largest position, when the host knows it
    decode: DecodeRows | None = None  # when a decode kernel serves the one-token requests

    @property
    def decodes_whole_batch(self) -> bool:
        """Every request decodes one token and the decode kernel serves them all (the CUDA-graph case)."""
        return self.decode is not None and len(self.decode.requests) == len(self.seq_lens)

    @property
    def query_start_loc(self) -> list[int]:
        starts = [0]
        for n in self.query_lens:
            starts.append(starts[-1] + n)
        return starts
