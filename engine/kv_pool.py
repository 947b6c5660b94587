"""How much memory the KV pool takes when no block count is given."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from monovl.model.forward_batch import KVCache
from monovl.model.mono_internvl import MonoInternVL

if TYPE_CHECKING:
    from monovl.engine.llm_engine import EngineConfig

CONTEXT_PER_SEQUENCE = 8192  # tokens of KV the default pool holds for each of max_num_seqs
CPU_DEFAULT_GIB = 2.0  # the default pool's cap in RAM


def free_memory_gib(device: torch.device) -> float:
    """Free device memory on CUDA; available RAM (MemAvailable) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 4.0


def kv_pool_gib(config: EngineConfig, model: MonoInternVL) -> float:
    """kv_cache_memory; else kv_cache_fraction of the free memory; else room for max_num_seqs contexts
    of CONTEXT_PER_SEQUENCE tokens, at most 90% of the free GPU memory or CPU_DEFAULT_GIB."""
    if config.kv_cache_memory:
        return config.kv_cache_memory
    if config.kv_cache_fraction:
        if not 0 < config.kv_cache_fraction < 1:
            raise ValueError("--kv-cache-fraction must be between 0 and 1")
        return config.kv_cache_fraction * free_memory_gib(model.device)
    per_token = KVCache.bytes_per_block(model.config.llm, config.block_size, model.dtype) / config.block_size
    wanted = per_token * config.max_num_seqs * CONTEXT_PER_SEQUENCE / 2**30
    if model.device.type == "cuda":
        return min(wanted, 0.9 * free_memory_gib(model.device))
    return min(wanted, CPU_DEFAULT_GIB)
