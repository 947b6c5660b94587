"""`monovl generate` and `monovl make-tiny-checkpoint` end to end, as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from monovl.preprocessing.tokenizer import Tokenizer
from tests.conftest import png_bytes


def monovl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monovl.server.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "wide.png"
    path.write_bytes(png_bytes(900, 400, seed=5))
    return path


def generate_json(tiny_dir, *extra: str) -> dict:
    result = monovl("generate", "--model", str(tiny_dir), "--json", "--max-tokens", "12", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def without_logprob_values(record: dict) -> dict:
    return {
        **record,
        "logprobs": [[entry["token_id"], [i for i, _ in entry["top_logprobs"]]] for entry in record["logprobs"]],
    }


def logprob_values(record: dict) -> list[float]:
    return [value for entry in record["logprobs"] for _, value in entry["top_logprobs"]]


def test_greedy_json_is_deterministic_and_self_consistent(tiny_dir, image_file):
    """The plain path is bitwise deterministic from run to run. With oneDNN's kernels (the CPU's
    default fast path) a process now and then sums differently in the last bits
    (`python -m benchmarks.run_to_run`): the same tokens, logprobs within float tolerance."""
    args = ("--image", str(image_file), "--prompt", "Describe the image.")
    plain = ("--fast-path", "none")
    assert generate_json(tiny_dir, *args, *plain) == generate_json(tiny_dir, *args, *plain)
    first, second = generate_json(tiny_dir, *args), generate_json(tiny_dir, *args)
    assert without_logprob_values(first) == without_logprob_values(second)
    assert logprob_values(first) == pytest.approx(logprob_values(second), abs=1e-2)
    tok = Tokenizer(tiny_dir)
    assert first["prompt_token_ids"] == tok.encode(first["prompt"])
    assert first["prompt"].count("<IMG_CONTEXT>") == 256 * 3  # 2x1 grid + thumbnail
    assert first["prompt"].endswith("</img>\nDescribe the image.<|im_end|><|im_start|>assistant\n")
    assert first["text"] == tok.decode(first["token_ids"])
    assert len(first["logprobs"]) == len(first["token_ids"])
    for token_id, entry in zip(first["token_ids"], first["logprobs"], strict=True):
        assert entry["token_id"] == token_id == entry["top_logprobs"][0][0]
        assert entry["logprob"] == entry["top_logprobs"][0][1] <= 0
        assert len(entry["top_logprobs"]) == 5
    assert first["finish_reason"] in ("stop", "length")


def test_tile_cap_and_system_message(tiny_dir, image_file):
    out = generate_json(
        tiny_dir, "--image", str(image_file), "--max-num-tiles", "1", "--system", "Be brief.", "--prompt", "Hi"
    )
    assert out["prompt"].count("<IMG_CONTEXT>") == 256
    assert out["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_dir):
    args = ("--prompt", "Tell me a story.", "--temperature", "1.5", "--seed", "7")
    sampled, again = generate_json(tiny_dir, *args), generate_json(tiny_dir, *args)
    assert without_logprob_values(sampled) == without_logprob_values(again)
    assert logprob_values(sampled) == pytest.approx(logprob_values(again), abs=1e-2)
    assert sampled["token_ids"] != generate_json(tiny_dir, "--prompt", "Tell me a story.")["token_ids"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "{missing}", "--prompt", "x"), "neither a checkpoint directory nor a hub id"),
        (("--model", "{ckpt}", "--image", "{missing}", "--prompt", "x"), "No such file"),
        (("--model", "{ckpt}", "--image", "{text}", "--prompt", "x"), "not a readable image"),
        (("--model", "{ckpt}", "--dtype", "float16", "--prompt", "x"), "float16"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tiny_dir, tmp_path, args, message):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    paths = {"missing": str(tmp_path / "absent"), "ckpt": str(tiny_dir), "text": str(text)}
    result = monovl("generate", *(a.format(**paths) for a in args))
    assert result.returncode == 2
    assert result.stderr.startswith("monovl: error:") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_serve_with_a_bad_model_is_one_line_and_exit_code_2(tmp_path):
    # the model is found before the engine process starts; the error reaches the command line as one line
    result = monovl("serve", "--model", str(tmp_path / "absent"), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("monovl: error:") and "neither a checkpoint directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_tiny_checkpoint_and_demo_default(tmp_path):
    out = tmp_path / "ckpt"
    made = monovl("make-tiny-checkpoint", str(out), "--seed", "3", "--shards", "1", "--layers", "1")
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "added_tokens.json",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    demo = monovl("generate", "--prompt", "Hello", "--max-tokens", "3", env={"MONOVL_CACHE": str(tmp_path / "c")})
    assert demo.returncode == 0, demo.stderr
    assert "demo checkpoint" in demo.stderr and (tmp_path / "c" / "demo-checkpoint" / "config.json").is_file()
