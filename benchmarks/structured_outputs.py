"""What a JSON schema costs: decode throughput with and without one, at 1 and 16 concurrent chats.

    python -m benchmarks.structured_outputs [--output-tokens 128] [--hidden 1024 --layers 8]

Two parts. (1) The engine end to end on a mid-size random checkpoint (cached under
/tmp/monovl-bench): the same chats free (ignore_eos) and constrained by a schema whose string
field cannot close within the run, so both runs decode exactly --output-tokens tokens each;
output tokens/s (the median of --repeats alternating runs) and the ratio. (2) The grammar's own
work a step (bitmask fill and apply) at the real model's vocabulary size (92,553 ids, a
synthetic sentencepiece-like vocabulary: the tiny checkpoints' is 1,009), which part 1's small
vocabulary understates; printed beside part 1's step time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from benchmarks.engine_bench import MID_SIZE, machine
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.engine.structured_output import GrammarBatch, Grammars, StructuredOutput, Vocabulary
from monovl.preprocessing.chat_template import ChatMessage
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args

# A string that cannot close within the run: every constrained chat decodes all --output-tokens.
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "minLength": 20000}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}
REAL_VOCAB = 92553


def decode_run(engine: LLMEngine, prompts, params: SamplingParams) -> tuple[float, int, list[str]]:
    for k, prompt in enumerate(prompts):
        engine.add_request(f"r{k}", prompt, params)
    tokens, reasons, started = 0, [], time.perf_counter()
    while engine.has_unfinished():
        for output in engine.step():
            tokens += len(output.new_token_ids)
            if output.finished:
                reasons.append(output.finish_reason)
    return time.perf_counter() - started, tokens, reasons


def synthetic_vocabulary(size: int, seed: int = 0) -> Vocabulary:
    """Byte pieces, then sentencepiece-like words and subwords (Latin and CJK, some with "▁"), one in
    fifty with punctuation such as code and JSON pieces have."""
    rng = random.Random(seed)
    pieces = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    punctuation = ".,:;!?'\"{}[]()-_/\\"
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    seen = set(pieces)
    while len(pieces) < size:
        if rng.random() < 0.3:
            piece = "".join(rng.choice(cjk) for _ in range(rng.randint(1, 3)))
        else:
            chars = letters + punctuation if rng.random() < 0.02 else letters
            piece = "".join(rng.choice(chars) for _ in range(rng.randint(1, 9)))
        piece = ("\u2581" + piece) if rng.random() < 0.5 else piece
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    return Vocabulary(tuple("" if p in ("<unk>", "<s>") else p for p in pieces), (2,))


def mask_cost(batch: int, steps: int) -> float:
    """Seconds a step spends on the grammar at the real vocabulary size, for `batch` constrained rows."""
    grammars = Grammars(synthetic_vocabulary(REAL_VOCAB))
    spec = StructuredOutput.json_schema(SCHEMA)
    matchers = [grammars.matcher(spec) for _ in range(batch)]
    for m in matchers:
        m.accept_string('{"title": "')
    masks = GrammarBatch()
    logits = torch.randn(batch, REAL_VOCAB)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        masks.apply(logits, matchers)
        chosen = logits.argmax(-1).tolist()
        for m, token in zip(matchers, chosen, strict=True):
            if not m.accept_token(token):  # keep the matchers inside the string
                m.rollback(0)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; the median is printed")
    add_shape_args(parser, MID_SIZE)
    args = parser.parse_args()
    directory = bench_checkpoint(shape_from_args(args))
    loaded = load_checkpoint(str(directory), args.dtype, "auto")
    pre = loaded.preprocessor
    engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(kv_cache_memory=1.0, max_num_batched_tokens=2048))
    schema = StructuredOutput.json_schema(SCHEMA)
    started = time.perf_counter()
    engine.grammars.compile(schema)
    compile_s = time.perf_counter() - started
    print(f"machine: {machine()}; checkpoint {directory.name}; vocabulary {loaded.model.config.llm.vocab_size}")
    print(f"schema compiled in {compile_s * 1000:.1f} ms (xgrammar import and vocabulary set-up included)")
    free = SamplingParams(temperature=1.0, max_tokens=args.output_tokens, ignore_eos=True)
    constrained = SamplingParams(temperature=1.0, max_tokens=args.output_tokens, structured_output=schema)
    step_times = {}
    for concurrency in (1, 16):
        prompts = [
            pre.process([ChatMessage.text("user", f"Name a film, as JSON. ({k})")], []) for k in range(concurrency)
        ]
        decode_run(engine, prompts[:1], free)  # warm-up
        runs: dict[str, list[float]] = {"free": [], "json_schema": []}
        for _ in range(args.repeats):  # alternating, so that a drifting machine favours neither
            for name, params in [("free", free), ("json_schema", constrained)]:
                seconds, tokens, reasons = decode_run(engine, prompts, params)
                assert reasons == ["length"] * concurrency, reasons  # both decode the same number of tokens
                runs[name].append(tokens / seconds)
                step_times[concurrency] = seconds / args.output_tokens
        results = {name: statistics.median(values) for name, values in runs.items()}
        ratio = results["json_schema"] / results["free"]
        print(
            f"{concurrency:2d} concurrent: free {results['free']:.1f} tok/s, json_schema "
            f"{results['json_schema']:.1f} tok/s, constrained/free {ratio:.3f}"
        )
    for batch in (1, 16):
        cost = mask_cost(batch, 200)
        print(
            f"grammar work a step at vocabulary {REAL_VOCAB}, {batch:2d} rows: {cost * 1000:.2f} ms "
            f"({cost / step_times[batch] * 100:.1f}% of this model's constrained step)"
        )


if __name__ == "__main__":
    main()
