"""Random weights and `config.json` in the exact layout of OpenGVLab/Mono-InternVL-2B, at any size.

Tensor names and shapes come from `MonoInternVL` itself (built on the meta device), so a tiny
checkpoint loads through the same strict name match as the real one. Scales are chosen so that
logits are far from flat and greedy decoding does not settle into a one-token loop.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from monovl.model.config import ModelConfig
from monovl.model.mono_internvl import MonoInternVL


@dataclass(frozen=True)
class TinyShape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vit_hidden: int = 32
    rope_scaling: str = "dynamic:2.0"  # "none", "dynamic:F" or "linear:F"
    max_position_embeddings: int = 32768
    vocab: int = 0  # rows of the embedding and LM head; 0: the tokenizer's size, more: padded past it


def config_dict(shape: TinyShape, vocab_size: int) -> dict:
    """config.json with the real checkpoint's keys and values, sized by `shape`."""
    rope_scaling = None
    if shape.rope_scaling != "none":
        kind, factor = shape.rope_scaling.split(":")
        rope_scaling = {"type": kind, "factor": float(factor)}
    llm_config = {
        "architectures": ["InternLM2VEForCausalLM"],
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": shape.max_position_embeddings,
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-05,
        "rope_scaling": rope_scaling,
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": max(vocab_size, shape.vocab),
    }
    vision_config = {
        "architectures": ["InternVisionPatchModel"],
        "model_type": "intern_vit_patch",
        "hidden_size": shape.vit_hidden,
        "image_size": 448,
        "num_channels": 3,
        "patch_size": 14,
        "torch_dtype": "bfloat16",
    }
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": 448,
        "llm_config": llm_config,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "pad2square": False,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internlm2-chat",
        "torch_dtype": "bfloat16",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": vision_config,
    }


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic bfloat16 tensors for every parameter, named as in the checkpoint."""
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in MonoInternVL(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator)
        if name.endswith("norm.weight") or name == "mlp1.0.weight":
            value = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.1 * noise
        elif name.endswith("tok_embeddings.weight"):
            value = noise
        elif name.endswith(("class_embedding", "position_embedding")):
            value = 0.5 * noise
        else:
            fan_in = math.prod(shape[1:])
            gain = 2.5 if name.endswith(("wqkv.weight", "wo.weight", "w2.weight", "output.weight")) else 1.25
            value = noise * (gain / math.sqrt(fan_in))
        weights[name] = value.to(torch.bfloat16)
    return weights


def write_shards(directory: Path, weights: dict[str, torch.Tensor], shards: int) -> None:
    """model.safetensors, or `shards` files of about equal size with model.safetensors.index.json."""
    if shards <= 1:
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    total = sum(t.numel() * t.element_size() for t in weights.values())
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    written = 0
    for name, tensor in weights.items():
        groups[min(shards - 1, written * shards // total)][name] = tensor
        written += tensor.numel() * tensor.element_size()
    groups = [group for group in groups if group]
    weight_map = {}
    for k, group in enumerate(groups):
        filename = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, filename))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
