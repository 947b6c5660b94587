"""How `monovl serve` sizes its KV pool from the flags."""

import argparse

import pytest
import torch

from server.serve import free_memory_gib, kv_cache_gib


class Loaded:
    def __init__(self, model):
        self.model = model


def args(**kwargs) -> argparse.Namespace:
    return argparse.Namespace(**{"kv_cache_memory": None, "kv_cache_fraction": None, "max_num_seqs": 4, **kwargs})


def test_explicit_gib_fraction_and_default(tiny_model):
    loaded = Loaded(tiny_model)
    assert kv_cache_gib(args(kv_cache_memory=1.5), loaded) == 1.5
    assert kv_cache_gib(args(kv_cache_fraction=0.1), loaded) == pytest.approx(
        0.1 * free_memory_gib(torch.device("cpu")), rel=0.2
    )
    # default: 4 sequences of 8192 tokens at 512 bytes per token in the tiny model
    assert kv_cache_gib(args(), loaded) == pytest.approx(4 * 8192 * 512 / 2**30)
    with pytest.raises(ValueError, match="between 0 and 1"):
        kv_cache_gib(args(kv_cache_fraction=1.5), loaded)
