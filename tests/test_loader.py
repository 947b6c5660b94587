import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from monovl.model.loader import CheckpointError, load_model, parse_dtype, resolve_checkpoint, weight_files

CPU = torch.device("cpu")


def single_file_copy(src, dst, edit=None):
    """dst: a copy of checkpoint src with all weights in one model.safetensors, edited by `edit`."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model*.safetensors*"))
    tensors = {}
    for path in weight_files(src):
        tensors.update(load_file(str(path)))
    if edit:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_sharded_and_single_file_load_the_same_weights(tiny_dir, tmp_path):
    sharded = load_model(tiny_dir, torch.float32, CPU, "none")
    single = load_model(single_file_copy(tiny_dir, tmp_path / "single"), torch.float32, CPU, "none")
    assert len(weight_files(tiny_dir)) == 2
    for (name, a), (_, b) in zip(sharded.state_dict().items(), single.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_dtype_is_applied_to_every_parameter(tiny_dir):
    model = load_model(tiny_dir, torch.bfloat16, CPU, "none")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny_dir, tmp_path):
    def edit(tensors):
        del tensors["language_model.model.layers.1.feed_forward_ve.w2.weight"]
        tensors["language_model.model.layers.9.extra.weight"] = torch.zeros(2)
        tensors["mlp1.1.bias"] = torch.zeros(3)

    broken = single_file_copy(tiny_dir, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError) as error:
        load_model(broken, torch.float32, CPU)
    message = str(error.value)
    assert "missing: language_model.model.layers.1.feed_forward_ve.w2.weight" in message
    assert "unexpected: language_model.model.layers.9.extra.weight" in message
    assert "mis-shaped: mlp1.1.bias (checkpoint (3,), model (64,))" in message


def test_missing_shard_and_missing_weights(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    (copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        load_model(copy, torch.float32, CPU)
    for path in copy.glob("model*"):
        path.unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_model(copy, torch.float32, CPU)


@pytest.mark.parametrize("cut", [5, 0.5])
def test_a_truncated_shard_is_named_with_the_reason(tiny_dir, tmp_path, cut):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    shard = copy / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: cut if isinstance(cut, int) else int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=rf"cannot read the weights in {shard}: .*header"):
        load_model(copy, torch.float32, CPU)


def test_a_truncated_shard_exits_2_with_one_line(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    shard = copy / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    command = [sys.executable, "-m", "monovl.server.cli", "generate", "--model", str(copy), "--prompt", "x"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert f"cannot read the weights in {shard}" in done.stderr and "Traceback" not in done.stderr


def test_dtypes():
    assert parse_dtype("auto", CPU) == torch.float32
    assert parse_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert parse_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(CheckpointError, match="NaN in float16"):
        parse_dtype("float16", CPU)
    with pytest.raises(CheckpointError, match="unknown dtype"):
        parse_dtype("int8", CPU)


def test_paths_that_are_neither_directory_nor_hub_id(tmp_path):
    for bad in (str(tmp_path / "absent"), "./relative/absent", "not-a-hub-id", "a/b/c"):
        with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a hub id"):
            resolve_checkpoint(bad)


def run_resolve(model: str, hf_home) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    code = "import sys; from model.loader import resolve_checkpoint; print(resolve_checkpoint(sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True, text=True)


def test_hub_id_resolves_from_the_hf_cache_offline(tiny_dir, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--OpenGVLab--Mono-InternVL-2B"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    found = run_resolve("OpenGVLab/Mono-InternVL-2B", tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(repo / "snapshots" / commit)


def test_hub_id_missing_offline_is_a_clear_error(tmp_path):
    result = run_resolve("OpenGVLab/Mono-InternVL-2B", tmp_path)
    assert result.returncode != 0 and "not in the Hugging Face cache" in result.stderr


LOAD_AND_STEP = """
import sys
from torch import nn
import monovl.server.app
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.chat_template import ChatMessage
from monovl.checkpoint import load_checkpoint

fills = {name: getattr(nn.init, name) for name in ("normal_", "uniform_", "kaiming_uniform_")}
loaded = load_checkpoint(sys.argv[1], "float32", "cpu")
assert all(getattr(nn.init, name) is fill for name, fill in fills.items()), "nn.init left patched"
engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(num_kv_blocks=64, max_num_batched_tokens=16))
for words in ("hi", "a longer question than one chunk holds, so a chunk attends after context"):
    prompt = loaded.preprocessor.process([ChatMessage.text("user", words)], [])
    engine.add_request(words, prompt, SamplingParams(max_tokens=3))
while engine.has_unfinished():
    engine.step()
print("torch._dynamo" in sys.modules)
"""


def test_serving_on_the_cpu_never_imports_torch_dynamo(tiny_dir):
    # torch._dynamo is a long import (docs/performance.md, Start-up): the server's front end and a
    # CPU engine core (building the model, prefill chunks after context, decode) start without it.
    done = subprocess.run([sys.executable, "-c", LOAD_AND_STEP, str(tiny_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
