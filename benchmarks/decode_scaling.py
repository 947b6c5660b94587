"""What a decode step of N rows costs against a step of one row on the CPU, part by part.

    python -m benchmarks.decode_scaling [--rows 1 16 64] [--steps 24] [--fast-path auto] [shape flags]

For each row count, an `LLMEngine` decodes that many text chats at once (http_tax's questions,
greedy, ignore_eos). After the prompts and a few decode steps, --steps steps are timed, and within
them the time spent in the linear layers (the `nn.Linear` and `OneDNNLinear` modules) and in
attention (`paged_attention`: the decode kernel, on the CPU the K/V gather and SDPA); "rest" is
the step's other time (norms, rotary, sampling, the scheduler's and the runner's Python).

Batching multiplies throughput by N x t1 / tN, t the step's time at 1 and N rows. Two more ratios:
"attention at floor", were attention at N rows to take only the time its K/V bytes need at this
machine's read bandwidth (`roofline.read_bandwidth`); and "linears only", were every part but the
linears to cost at N rows what it costs at one: the most this machine's GEMMs leave to batching.
The contexts are the prompts' ~80 tokens plus the steps so far, so attention's share grows in a
longer run. CPU only (on a GPU the host's timers would not see the kernels' time).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.engine_bench import MID_SIZE, machine
from benchmarks.profiling import timing
from benchmarks.roofline import read_bandwidth
from benchmarks.stream_overhead import question
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.model import internlm2
from monovl.model.fast_path import DEFAULT as FAST_PATH_DEFAULT
from monovl.model.onednn_linear import OneDNNLinear
from monovl.preprocessing.chat_template import ChatMessage
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args

WARM_STEPS = 6  # decode steps after the prompts' before any timing


@dataclass(frozen=True)
class StepCost:
    """Milliseconds per step, in all and by part; the K/V bytes a step's attention reads."""

    wall: float
    linears: float
    attention: float
    kv_bytes: float  # every layer's K and V of every row, mean over the timed steps

    @property
    def rest(self) -> float:
        return self.wall - self.linears - self.attention


def measure(loaded, rows: int, steps: int) -> StepCost:
    config = EngineConfig(kv_cache_memory=1.0, max_num_seqs=rows, max_num_batched_tokens=512)
    engine = LLMEngine(loaded.model, loaded.tokens, config)
    params = SamplingParams(temperature=0, max_tokens=WARM_STEPS + steps + 64, ignore_eos=True)
    for k in range(rows):
        prompt = loaded.preprocessor.process([ChatMessage.text("user", question(k))], [])
        engine.add_request(str(k), prompt, params)
    decoding: set[str] = set()
    while len(decoding) < rows:  # until every prompt is in and has its first token
        decoding.update(output.request_id for output in engine.step() if output.new_token_ids)
    for _ in range(WARM_STEPS):
        engine.step()
    totals = {"linears": 0.0, "attention": 0.0}
    context = sum(r.num_tokens for r in engine.scheduler.running)
    with (
        timing(nn.Linear, "forward", totals, "linears"),
        timing(OneDNNLinear, "forward", totals, "linears"),
        timing(internlm2, "paged_attention", totals, "attention"),
    ):
        started = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = time.perf_counter() - started
    context = (context + sum(r.num_tokens for r in engine.scheduler.running)) / 2
    llm = loaded.model.config.llm
    kv_bytes = 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * context
    ms = 1000 / steps
    return StepCost(wall * ms, totals["linears"] * ms, totals["attention"] * ms, kv_bytes * loaded.model.dtype.itemsize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--fast-path", default=FAST_PATH_DEFAULT)
    add_shape_args(parser, MID_SIZE)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    directory = bench_checkpoint(shape_from_args(args))
    loaded = load_checkpoint(str(directory), "auto", "cpu", args.fast_path)
    print(f"machine: {machine()}; checkpoint {directory.name}; fast path {args.fast_path}")
    bandwidth = read_bandwidth(torch.device("cpu"))
    print(f"read bandwidth {bandwidth / 2**30:.1f} GiB/s")
    costs = {n: measure(loaded, n, args.steps) for n in sorted(set(args.rows) | {1})}
    one = costs[1]
    print("       milliseconds a step:                          N x t1 / tN:")
    print(" rows  step  linears  attention (K/V floor)  rest     step  attention at floor  linears only")
    for n, cost in costs.items():
        floor = cost.kv_bytes / bandwidth * 1000
        at_floor = n * one.wall / (cost.wall - cost.attention + floor)
        linears_only = n * one.wall / (one.wall - one.linears + cost.linears)
        print(
            f"{n:5d} {cost.wall:5.1f} {cost.linears:8.1f} {cost.attention:10.1f} ({floor:4.1f}) {cost.rest:5.1f}"
            f" {n * one.wall / cost.wall:8.2f}x {at_floor:18.2f}x {linears_only:12.2f}x"
        )


if __name__ == "__main__":
    main()
