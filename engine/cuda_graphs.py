"""CUDA graphs of the decode step: the whole forward and the LM head replayed as one launch.

An eager decode step of the 2B model issues about a thousand kernels, and on an H200 the Python
that launches them takes 25 ms against well under 1 ms of GPU work. A step where every request
decodes one text token has shapes fixed by the batch size alone, so it is captured once per size
at start (vLLM's sizes: 1, 2, 4, 8, then every 8) and replayed with new inputs copied into the
graph's static buffers. A batch is padded to the next captured size; the padding rows write their
K/V to a scratch block that no request owns and attend to one token of it.

Only what depends on the step's data crosses in: token ids, the rotary cos/sin (computed outside,
so any RoPE scaling works), KV slots, block tables and context lengths. Contexts are bounded by
`max_len`, which fixes the block-table width and so the decode kernel's partitions; longer
requests, prefill chunks and image tokens take the eager path.

`capture=False` runs the same static-buffer forward without a graph: the CPU tests check the
padding and buffer logic through it, as CUDA graphs themselves need a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from model.fast_path import FastPath
from model.forward_batch import DecodeRows, ForwardBatch, KVCache
from model.mono_internvl import MonoInternVL


def capture_sizes(max_batch: int) -> list[int]:
    return sorted({size for size in (1, 2, 4, *range(8, max_batch + 8, 8)) if size <= max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(
        self,
        model: MonoInternVL,
        kv_cache: KVCache,
        decode_kernel: Callable[..., torch.Tensor],
        fast: FastPath,
        scratch_block: int,
        max_batch: int,
        max_len: int,
        capture: bool = True,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.decode_kernel = decode_kernel
        self.fast = fast
        self.sizes = capture_sizes(max_batch)
        self.max_len = max_len
        block_size = kv_cache.block_size
        self.scratch_slot = scratch_block * block_size
        device = model.device
        head_dim = model.config.llm.head_dim
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.cos = torch.zeros(max_batch, head_dim, device=device)
        self.sin = torch.zeros(max_batch, head_dim, device=device)
        self.slot_mapping = torch.full((max_batch,), self.scratch_slot, dtype=torch.long, device=device)
        self.block_tables = torch.full(
            (max_batch, -(-max_len // block_size)), scratch_block, dtype=torch.long, device=device
        )
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        if capture:
            self._capture()

    def fits(self, batch: ForwardBatch) -> bool:
        """Every request decodes one text token, within the captured batch sizes and context length."""
        return (
            batch.decodes_whole_batch
            and len(batch.seq_lens) <= self.sizes[-1]
            and batch.visual_embeds is None
            and max(batch.seq_lens) <= self.max_len
            and batch.block_tables.shape[1] <= self.block_tables.shape[1]
        )

    @torch.inference_mode()
    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """[B, vocab] float32 logits of a batch that `fits`."""
        n = len(batch.seq_lens)
        size = next(s for s in self.sizes if s >= n)
        cos, sin = self.model.rotary.cos_sin(batch.positions, batch.rope_lens, batch.positions_end)
        self.input_ids[:n].copy_(batch.input_ids)
        self.cos[:n].copy_(cos)
        self.sin[:n].copy_(sin)
        self.slot_mapping[:n].copy_(batch.slot_mapping)
        self.slot_mapping[n:size].fill_(self.scratch_slot)  # padding must never write a live slot
        self.block_tables[:n, : batch.block_tables.shape[1]].copy_(batch.block_tables)
        self.seq_lens[:n].copy_(batch.decode.seq_lens)
        self.seq_lens[n:size].fill_(1)
        if size in self.graphs:
            self.graphs[size].replay()
            return self.logits[size][:n]
        return self._forward(size)[:n]

    def _forward(self, size: int) -> torch.Tensor:
        batch = ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.input_ids[:size],  # unused: the rotary angles come in through cos/sin
            visual_mask=torch.zeros(size, dtype=torch.bool, device=self.input_ids.device),
            visual_embeds=None,
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            query_lens=[1] * size,
            seq_lens=[1] * size,  # unused: the kernel reads the device lengths
        )
        batch.decode = DecodeRows(
            self.decode_kernel,
            list(range(size)),
            torch.arange(size, device=self.input_ids.device),
            self.block_tables[:size],
            self.seq_lens[:size],
        )
        llm = self.model.language_model
        x = llm.model.tok_embeddings(batch.input_ids)
        hidden = llm.model(x, self.cos[:size], self.sin[:size], self.kv_cache, batch, None, self.fast)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):  # largest first, so the smaller graphs reuse its memory
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compiles the Triton kernels and settles cuBLAS's choices
                    self._forward(size)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[size] = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
