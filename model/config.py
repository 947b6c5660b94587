"""The checkpoint's `config.json`, normalized once into frozen, typed objects.

Everything that monovl does not implement is refused here, at the edge, with a message that
names the key, so that nothing downstream has to re-check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config.json that monovl cannot serve faithfully."""


@dataclass(frozen=True)
class RopeScaling:
    kind: Literal["dynamic", "linear"]
    factor: float


@dataclass(frozen=True)
class LLMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    bias: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def context_length(self) -> int:
        """The context the config declares: max_position_embeddings, times the RoPE scaling factor
        (dynamic NTK and linear scaling both stretch it), as vLLM derives its default max_model_len."""
        factor = self.rope_scaling.factor if self.rope_scaling else 1.0
        return int(self.max_position_embeddings * factor)


@dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    hidden_size: int
    num_channels: int


@dataclass(frozen=True)
class ModelConfig:
    llm: LLMConfig
    vision: VisionConfig
    image_size: int
    downsample_ratio: float
    template: str
    dynamic_image_size: bool
    use_thumbnail: bool
    min_dynamic_patch: int
    max_dynamic_patch: int

    @property
    def patch_grid(self) -> int:
        """Patches per side of one tile (32 for 448 px tiles of 14 px patches)."""
        return self.image_size // self.vision.patch_size

    @property
    def shuffle_factor(self) -> int:
        """Side of the square of patches merged into one token by pixel shuffle (2 for ratio 0.5)."""
        return round(1 / self.downsample_ratio)

    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile: 256 for the released model."""
        return (self.patch_grid // self.shuffle_factor) ** 2

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> ModelConfig:
        path = Path(checkpoint_dir) / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no config.json in {checkpoint_dir}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        _expect(raw, "architectures", ["InternVLChatModel"])
        _expect(raw, "template", "internlm2-chat")
        if raw.get("ps_version", "v1") != "v2":
            raise ConfigError(
                f"ps_version {raw.get('ps_version', 'v1')!r} is not supported: only 'v2' pixel shuffle "
                "(v1 leaves the feature map transposed and no released Mono-InternVL uses it)"
            )
        if raw.get("select_layer", -1) != -1:
            raise ConfigError("select_layer must be -1: the patch vision model has no intermediate layers")
        vision = _vision_config(_section(raw, "vision_config"))
        llm = _llm_config(_section(raw, "llm_config"))
        image_size = int(raw.get("force_image_size") or vision.image_size)
        if image_size % vision.patch_size:
            raise ConfigError(f"image size {image_size} is not a multiple of patch_size {vision.patch_size}")
        ratio = float(raw.get("downsample_ratio", 0.5))
        factor = round(1 / ratio) if ratio > 0 else 0
        if factor < 1 or abs(factor * ratio - 1) > 1e-9 or (image_size // vision.patch_size) % factor:
            raise ConfigError(f"downsample_ratio {ratio} must be 1/k with k dividing the patch grid")
        lo, hi = int(raw.get("min_dynamic_patch", 1)), int(raw.get("max_dynamic_patch", 12))
        if not 1 <= lo <= hi:
            raise ConfigError(f"need 1 <= min_dynamic_patch <= max_dynamic_patch, got {lo}, {hi}")
        return cls(
            llm=llm,
            vision=vision,
            image_size=image_size,
            downsample_ratio=ratio,
            template=raw["template"],
            dynamic_image_size=bool(raw.get("dynamic_image_size", True)),
            use_thumbnail=bool(raw.get("use_thumbnail", True)),
            min_dynamic_patch=lo,
            max_dynamic_patch=hi,
        )


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    section = raw.get(key)
    if not isinstance(section, dict):
        raise ConfigError(f"config.json has no {key!r} object")
    return section


def _expect(raw: dict[str, Any], key: str, wanted: object, where: str = "config.json") -> None:
    if raw.get(key) != wanted:
        raise ConfigError(f"{where}: {key} is {raw.get(key)!r}; monovl serves only {wanted!r}")


def _vision_config(raw: dict[str, Any]) -> VisionConfig:
    if raw.get("model_type") != "intern_vit_patch":
        raise ConfigError(
            f"vision_config.model_type is {raw.get('model_type')!r}; monovl serves only the "
            "'intern_vit_patch' vision embedding of Mono-InternVL (no ViT encoder)"
        )
    return VisionConfig(
        image_size=int(raw["image_size"]),
        patch_size=int(raw["patch_size"]),
        hidden_size=int(raw["hidden_size"]),
        num_channels=int(raw.get("num_channels", 3)),
    )


def _llm_config(raw: dict[str, Any]) -> LLMConfig:
    _expect(raw, "architectures", ["InternLM2VEForCausalLM"], "llm_config")
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"llm_config.hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
    try:
        cfg = LLMConfig(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            num_key_value_heads=int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", 10000)),
            rope_scaling=_rope_scaling(raw.get("rope_scaling")),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            bias=bool(raw.get("bias", True)),
        )
    except KeyError as e:
        raise ConfigError(f"llm_config is missing {e.args[0]!r}") from None
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError("llm_config.hidden_size must be divisible by num_attention_heads")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ConfigError("llm_config.num_attention_heads must be divisible by num_key_value_heads")
    if cfg.head_dim % 2:
        raise ConfigError("rotary embedding needs an even head dimension")
    return cfg


def _rope_scaling(raw: object) -> RopeScaling | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in ("dynamic", "linear"):
        raise ConfigError(f"rope_scaling {raw!r} is not supported: only null, dynamic or linear")
    factor = float(raw.get("factor", 1.0))
    if factor < 1.0:
        raise ConfigError(f"rope_scaling.factor must be >= 1, got {factor}")
    return RopeScaling(kind=raw["type"], factor=factor)
