"""CUDA graphs of the decode step: the whole forward and the LM head replayed as one launch.

An eager decode step launches every kernel of the forward from Python, one op at a time, and on a
GPU that launching takes longer than the kernels' own work (docs/performance.md has both times).
A step where every request decodes one text token has shapes fixed by the batch size alone, so it
is captured once per size at start (vLLM's sizes: 1, 2, 4, 8, then every 8) and replayed with new
inputs copied into the graph's static buffers. A batch is padded to the next captured size; the
padding rows write their K/V to a scratch block that no request owns and attend to one token of it.

Only what depends on the step's data crosses in: token ids, the rotary cos/sin (computed outside,
so any RoPE scaling works), KV slots, block tables and context lengths. The host writes them from
the step's layout into pinned staging buffers, padding included, and two copies carry them into
the graph's buffers: no device tensor is built for the step. Contexts are bounded by
`max_len`, which fixes the block-table width and so the decode kernel's partitions; longer
requests, prefill chunks and image tokens take the eager path.

`capture=False` runs the same static-buffer forward without a graph: the CPU tests check the
padding and buffer logic through it, as CUDA graphs themselves need a GPU.
"""

from __future__ import annotations

import torch

from monovl.engine.step_layout import StepLayout
from monovl.model.forward_batch import DecodeKernel, DecodeRows, ForwardBatch, KVCache
from monovl.model.mono_internvl import MonoInternVL


def capture_sizes(max_batch: int) -> list[int]:
    return sorted({size for size in (1, 2, 4, *range(8, max_batch + 8, 8)) if size <= max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(
        self,
        model: MonoInternVL,
        kv_cache: KVCache,
        decode_kernel: DecodeKernel,
        scratch_block: int,
        max_batch: int,
        max_len: int,
        capture: bool = True,
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.decode_kernel = decode_kernel
        self.sizes = capture_sizes(max_batch)
        self.max_len = max_len
        block_size = kv_cache.block_size
        self.scratch_slot = scratch_block * block_size
        device = model.device
        head_dim = model.config.llm.head_dim
        width = -(-max_len // block_size)
        pinned = device.type == "cuda"
        # Rows of `columns`: token ids, positions, KV slots, context lengths; staged on the host first.
        self.staged = torch.zeros(4, max_batch, dtype=torch.long, pin_memory=pinned)
        self.staged_tables = torch.full((max_batch, width), scratch_block, dtype=torch.long, pin_memory=pinned)
        self.columns = torch.zeros(4, max_batch, dtype=torch.long, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.columns[0], self.columns[1], self.columns[2]
        self.slot_mapping.fill_(self.scratch_slot)
        self.block_tables = torch.full((max_batch, width), scratch_block, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        self.cos = torch.zeros(max_batch, head_dim, device=device)
        self.sin = torch.zeros(max_batch, head_dim, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        if capture:
            self._capture()

    def fits(self, layout: StepLayout) -> bool:
        """Every request decodes one text token, within the captured batch sizes and context length."""
        return (
            layout.decodes_only
            and len(layout.seq_lens) <= self.sizes[-1]
            and not any(layout.visual)
            and max(layout.seq_lens) <= self.max_len
            and layout.tables.shape[1] <= self.block_tables.shape[1]
        )

    @torch.inference_mode()
    def run(self, layout: StepLayout) -> torch.Tensor:
        """[B, vocab] float32 logits of a step that `fits`."""
        n = len(layout.seq_lens)
        size = next(s for s in self.sizes if s >= n)
        staged = self.staged.numpy()
        staged[0, :n], staged[1, :n], staged[2, :n], staged[3, :n] = (
            layout.ids,
            layout.positions,
            layout.slots,
            layout.seq_lens,
        )
        staged[2, n:size] = self.scratch_slot  # padding must never write a live slot
        staged[3, n:size] = 1
        width = layout.tables.shape[1]
        self.staged_tables.numpy()[:n, :width] = layout.tables
        # The staging is rewritten only after this step's logits reach the host, so the copies are done.
        self.columns[:, :size].copy_(self.staged[:, :size], non_blocking=True)
        self.block_tables[:n, :width].copy_(self.staged_tables[:n, :width], non_blocking=True)
        self.seq_lens[:size].copy_(self.columns[3, :size])
        rope_lens = None
        if max(layout.rope_lens) > self.model.config.llm.max_position_embeddings:
            rope_lens = torch.tensor(layout.rope_lens, device=self.columns.device)
        cos, sin = self.model.rotary.cos_sin(self.positions[:n], rope_lens, max(layout.positions) + 1)
        self.cos[:n].copy_(cos)
        self.sin[:n].copy_(sin)
        if size in self.graphs:
            self.graphs[size].replay()
            return self.logits[size][:n]
        return self._forward(size)[:n]

    def _forward(self, size: int) -> torch.Tensor:
        batch = ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],  # unused: the rotary angles come in through cos/sin
            expert_rows=None,
            visual_embeds=None,
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            query_lens=[1] * size,
            seq_lens=[1] * size,  # unused: the kernel reads the device lengths
            decode=DecodeRows(
                self.decode_kernel,
                list(range(size)),
                torch.arange(size, device=self.input_ids.device),
                self.block_tables[:size],
                self.seq_lens[:size],
            ),
        )
        hidden = self.model(batch, self.kv_cache, cos_sin=(self.cos[:size], self.sin[:size]))
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
