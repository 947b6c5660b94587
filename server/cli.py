"""The `monovl` command: `serve`, `generate` offline, and `make-tiny-checkpoint`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from monovl.engine.sampling_params import SamplingParams
from monovl.model.fast_path import DEFAULT as FAST_PATH_DEFAULT
from monovl.model.fast_path import NAMES as FAST_PATH_NAMES
from monovl.preprocessing.tiny_checkpoint import add_shape_args, shape_from_args
from monovl.server.version import version


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="checkpoint directory or hub id (or MONOVL_MODEL; default: the tiny demo checkpoint)",
    )
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--fast-path",
        default=FAST_PATH_DEFAULT,
        help=f"optional kernels (model/fast_path.py): auto (all this device runs), none, or some of "
        f"{','.join(FAST_PATH_NAMES)} (default: {FAST_PATH_DEFAULT})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monovl", description="Serve Mono-InternVL models.")
    parser.add_argument("--version", action="version", version=f"monovl {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    # As `vllm serve MODEL`: the model may come first, without --model.
    serve.add_argument("model_tag", nargs="?", metavar="MODEL", help="the same as --model")
    _add_model_args(serve)
    from monovl.server.serve import add_serve_args

    add_serve_args(serve)

    gen = commands.add_parser("generate", help="answer one chat offline and print the result")
    _add_model_args(gen)
    gen.add_argument("--image", action="append", default=[], help="image file (repeatable, in order)")
    gen.add_argument("--prompt", required=True, help="the user's question")
    gen.add_argument("--system", help="system message (default: the model's own)")
    gen.add_argument(
        "--history-json",
        type=Path,
        help="earlier turns: a JSON list of [question, answer] pairs; images go with the first question",
    )
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--max-num-tiles", type=int, help="cap on tiles per image (default: the checkpoint's)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    gen.add_argument("--top-p", type=float, default=SamplingParams.top_p)
    gen.add_argument("--top-k", type=int, default=SamplingParams.top_k, help="0 is no limit")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--json", action="store_true", help="print one JSON object with ids and logprobs")

    tiny = commands.add_parser("make-tiny-checkpoint", help="write a random-weight checkpoint in the real layout")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--shards", type=int, default=2)
    tiny.add_argument("--vocab-size", type=int, default=1000, help="sentencepiece pieces (before added tokens)")
    tiny.add_argument("--add-dummy-prefix", type=int, choices=[0, 1], default=1)
    add_shape_args(tiny)
    return parser


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The command line, with the model from MODEL, --model or MONOVL_MODEL, in that order."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "model"):
        tag = getattr(args, "model_tag", None)
        if tag and args.model and tag != args.model:
            parser.error(f"two models given: {tag} and --model {args.model}")
        args.model = tag or args.model or os.environ.get("MONOVL_MODEL") or None
    if args.command == "serve":
        from monovl.model.loader import CheckpointError
        from monovl.server.serve import check_settings

        try:
            conflicts = check_settings(args)
        except CheckpointError as error:  # a device that is not there
            parser.error(str(error))
        if conflicts:
            parser.error("; ".join(conflicts))
    return args


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parse_args(argv, parser)
    from monovl.model.config import ConfigError
    from monovl.model.loader import CheckpointError
    from monovl.preprocessing.image_decode import ImageError
    from monovl.preprocessing.tokenizer import TokenizerError
    from monovl.server.serve import SettingsError

    try:
        if args.command == "serve":
            from monovl.server.serve import serve

            serve(args)
        elif args.command == "generate":
            _generate(args)
        else:
            _make_tiny_checkpoint(args)
    except (CheckpointError, ConfigError, SettingsError, TokenizerError, ImageError, OSError, ValueError) as e:
        parser.exit(2, f"monovl: error: {e}\n")


def _make_tiny_checkpoint(args: argparse.Namespace) -> None:
    from monovl.preprocessing.tiny_checkpoint import make_tiny_checkpoint

    shape = shape_from_args(args)
    out = make_tiny_checkpoint(
        args.directory, args.seed, shape, args.vocab_size, args.shards, bool(args.add_dummy_prefix)
    )
    print(out)


def _conversation(args: argparse.Namespace) -> list[dict]:
    """The chat to answer, as OpenAI-style messages; the images go with the first question."""
    turns = json.loads(args.history_json.read_text(encoding="utf-8")) if args.history_json else []
    if not isinstance(turns, list) or not all(isinstance(t, list) and len(t) == 2 for t in turns):
        raise ValueError("--history-json must hold a list of [question, answer] pairs")
    messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    images = [{"type": "image_url", "image_url": {"url": path}} for path in args.image]
    for question, answer in [*turns, [args.prompt, None]]:
        messages.append({"role": "user", "content": [*images, {"type": "text", "text": question}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        images = []
    return messages


def _generate(args: argparse.Namespace) -> None:
    """One chat through the offline API (monovl.LLM), one request at a time."""
    from monovl.llm import LLM

    llm = LLM(
        args.model, dtype=args.dtype, device=args.device, fast_path=args.fast_path,
        max_image_tiles=args.max_num_tiles, max_num_seqs=1,
    )  # fmt: skip
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
        logprobs=5 if args.json else None,
    )
    (result,) = llm.chat(_conversation(args), params, use_tqdm=False)
    completion = result.outputs[0]
    if not args.json:
        print(completion.text)
        return
    logprobs = []
    for token_id, found in zip(completion.token_ids, completion.logprobs or [], strict=True):
        top = sorted((lp.rank, token, lp.logprob) for token, lp in found.items() if lp.rank is not None)
        logprobs.append(
            {"token_id": token_id, "logprob": found[token_id].logprob, "top_logprobs": [[t, v] for _, t, v in top]}
        )
    record = {
        "prompt": result.prompt,
        "prompt_token_ids": result.prompt_token_ids,
        "token_ids": completion.token_ids,
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "logprobs": logprobs,
    }
    json.dump(record, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
