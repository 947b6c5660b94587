"""`monovl serve`'s options are the configs' fields, with the configs' defaults; the KV pool's size."""

import dataclasses

import pytest
import torch

from monovl.engine.kv_pool import free_memory_gib, kv_pool_gib
from monovl.engine.llm_engine import EngineConfig
from monovl.engine.settings import defaults, from_arguments
from monovl.server.cli import parse_args
from monovl.server.state import ServerSettings


def test_the_command_lines_defaults_are_the_configs():
    args = parse_args(["serve"])
    engine = from_arguments(EngineConfig, args)
    assert engine == EngineConfig()
    for config in (EngineConfig, ServerSettings):
        for name, default in defaults(config).items():
            assert getattr(args, name) == default, name
    settings = from_arguments(ServerSettings, args, served_model_name="m", model_path="p", stats_interval=10.0)
    assert settings == ServerSettings(served_model_name="m", model_path="p")
    assert len(defaults(EngineConfig)) >= 12 and len(defaults(ServerSettings)) >= 6


def test_flags_reach_the_configs():
    args = parse_args(
        [
            "serve",
            *("--max-num-seqs", "3", "--max-num-batched-tokens", "100", "--kv-cache-memory", "0.5"),
            *("--no-prefix-caching", "--enforce-eager", "--json-any-whitespace", "--attention-backend", "torch"),
            *("--preprocess-workers", "5", "--max-image-tiles", "4", "--body-timeout", "2.5"),
            *("--remote-fetch-workers", "3"),
        ]
    )
    engine = from_arguments(EngineConfig, args)
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.kv_cache_memory) == (3, 100, 0.5)
    assert not engine.enable_prefix_caching and not engine.cuda_graphs and engine.json_any_whitespace
    assert engine.attention_backend == "torch"
    settings = from_arguments(ServerSettings, args, served_model_name="m", model_path="p")
    assert (settings.preprocess_workers, settings.max_image_tiles, settings.body_timeout) == (5, 4, 2.5)
    assert settings.remote_fetch_workers == 3
    with pytest.raises(SystemExit):
        parse_args(["serve", "--attention-backend", "cudnn"])


def test_the_batch_budget_defaults_by_device():
    assert EngineConfig().batched_tokens(torch.device("cpu")) == 512
    assert EngineConfig().batched_tokens(torch.device("cuda")) == 8192
    assert EngineConfig(max_num_batched_tokens=64).batched_tokens(torch.device("cuda")) == 64


def test_kv_pool_explicit_gib_fraction_and_default(tiny_model):
    config = dataclasses.replace(EngineConfig(), max_num_seqs=4)
    assert kv_pool_gib(dataclasses.replace(config, kv_cache_memory=1.5), tiny_model) == 1.5
    assert kv_pool_gib(dataclasses.replace(config, kv_cache_fraction=0.1), tiny_model) == pytest.approx(
        0.1 * free_memory_gib(torch.device("cpu")), rel=0.2
    )
    # default: 4 sequences of 8192 tokens at 512 bytes per token in the tiny model
    assert kv_pool_gib(config, tiny_model) == pytest.approx(4 * 8192 * 512 / 2**30)
    with pytest.raises(ValueError, match="between 0 and 1"):
        kv_pool_gib(dataclasses.replace(config, kv_cache_fraction=1.5), tiny_model)


IMPOSSIBLE = [
    ("--max-num-seqs", "0"),
    ("--max-num-seqs", "-3"),
    ("--kv-cache-memory", "-1"),
    ("--kv-cache-memory", "0"),
    ("--kv-cache-fraction", "0"),
    ("--max-model-len", "0"),
    ("--max-num-batched-tokens", "0"),
    ("--long-prefill-token-threshold", "-1"),
    ("--max-num-partial-prefills", "0"),
    ("--grammar-compile-timeout", "nan"),
    ("--grammar-compile-workers", "0"),
    ("--max-image-tiles", "0"),
    ("--max-images-per-request", "-1"),
    ("--body-timeout", "-1"),
    ("--max-queue", "-1"),
    ("--max-request-sequences", "0"),
    ("--max-body-values", "0"),
    ("--preprocess-workers", "0"),
    ("--image-workers", "0"),
    ("--stats-interval", "-1"),
    ("--graceful-timeout", "-5"),
    ("--header-timeout", "0"),
    ("--max-header-bytes", "0"),
    ("--max-header-count", "-1"),
]


@pytest.mark.parametrize(("flag", "value"), IMPOSSIBLE)
def test_an_impossible_setting_exits_2_naming_its_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["serve", flag, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {flag}: must be" in error and value in error, error


def test_disable_log_stats_turns_the_stats_lines_off():
    for argv, every in ((["serve"], 10.0), (["serve", "--disable-log-stats"], 0.0)):
        settings = from_arguments(ServerSettings, parse_args(argv), served_model_name="m", model_path="p")
        assert settings.stats_every == every


def test_the_edges_of_each_range_are_taken():
    args = parse_args(
        ["serve", "--long-prefill-token-threshold", "0", "--max-images-per-request", "0", "--stats-interval", "0"]
    )
    assert (args.long_prefill_token_threshold, args.max_images_per_request, args.stats_interval) == (0, 0, 0.0)
    assert parse_args(["serve", "--graceful-timeout", "0", "--max-num-seqs", "1"]).max_num_seqs == 1


CONFLICTS = [
    (["--kv-cache-memory", "1", "--kv-cache-fraction", "0.5"], ["--kv-cache-memory", "--kv-cache-fraction"]),
    (["--max-num-seqs", "64", "--max-num-batched-tokens", "32"], ["--max-num-batched-tokens", "--max-num-seqs"]),
    (["--max-num-seqs", "1000", "--device", "cpu"], ["--max-num-batched-tokens 512", "--max-num-seqs 1000"]),
    (
        ["--max-num-batched-tokens", "256", "--long-prefill-token-threshold", "300"],
        ["--long-prefill-token-threshold 300", "--max-num-batched-tokens 256"],
    ),
]


@pytest.mark.parametrize(("argv", "named"), CONFLICTS)
def test_settings_that_contradict_each_other_exit_2_naming_both_flags(argv, named, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["serve", *argv])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert all(flag in error for flag in named), error


def test_related_settings_that_agree_are_taken():
    args = parse_args(["serve", "--max-num-seqs", "8", "--max-num-batched-tokens", "8"])
    assert (args.max_num_seqs, args.max_num_batched_tokens) == (8, 8)
    parse_args(["serve", "--max-num-batched-tokens", "256", "--long-prefill-token-threshold", "256"])


@pytest.mark.parametrize(
    ("variable", "value"), [("MONOVL_PORT", "70000"), ("MONOVL_PORT", "http"), ("MONOVL_GRACEFUL_TIMEOUT", "-1")]
)
def test_an_impossible_value_from_the_environment_exits_2_naming_the_flag(variable, value, monkeypatch, capsys):
    monkeypatch.setenv(variable, value)
    flag = {"MONOVL_PORT": "--port", "MONOVL_GRACEFUL_TIMEOUT": "--graceful-timeout"}[variable]
    with pytest.raises(SystemExit) as exited:
        parse_args(["serve"])
    assert exited.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_serve_help_shows_every_settings_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for config in (EngineConfig, ServerSettings):
        for f in dataclasses.fields(config):
            if "help" not in f.metadata or f.type == "bool" or f.default in (None, ()):
                continue
            assert f"default: {f.default}" in text, f.name


def test_the_tile_cap_defaults_to_the_checkpoints(tiny_dir):
    from monovl.model.config import ModelConfig
    from monovl.preprocessing.processor import Preprocessor

    settings = ServerSettings(served_model_name="m", model_path="p")
    assert settings.max_image_tiles is None
    pre = Preprocessor(tiny_dir, ModelConfig.load(tiny_dir))
    assert pre.max_tiles(None, settings.max_image_tiles) == pre.config.max_dynamic_patch
    assert pre.max_tiles(None, 3) == 3


def test_a_context_that_cannot_hold_one_image_at_the_tile_cap_is_refused(tiny_dir):
    from monovl.model.config import ModelConfig
    from monovl.server.serve import SettingsError, check_image_room

    config = ModelConfig.load(tiny_dir)
    settings = ServerSettings(served_model_name="m", model_path="p", max_image_tiles=4)
    needed = 5 * config.num_image_token  # 4 tiles and the thumbnail
    check_image_room(settings, config, needed + 1)
    with pytest.raises(SettingsError, match="--max-image-tiles"):
        check_image_room(settings, config, needed)
    check_image_room(dataclasses.replace(settings, max_images_per_request=0), config, needed)
    check_image_room(dataclasses.replace(settings, max_image_tiles=1), config, config.num_image_token + 1)


def test_serve_refuses_a_context_too_small_for_an_image_before_loading(tiny_dir):
    from monovl.server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", str(tiny_dir), "--max-model-len", "300", "--port", "0", "--host", "127.0.0.1"])
    assert exited.value.code == 2
