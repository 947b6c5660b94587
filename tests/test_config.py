import copy
import json

import pytest

from monovl.model.config import ConfigError, ModelConfig


@pytest.fixture
def raw(tiny_dir):
    return json.loads((tiny_dir / "config.json").read_text())


def test_parses_the_real_layout(raw):
    config = ModelConfig.from_dict(raw)
    assert config.num_image_token == 256
    assert config.llm.head_dim == raw["llm_config"]["hidden_size"] // raw["llm_config"]["num_attention_heads"]
    assert config.llm.rope_scaling.kind == "dynamic" and config.llm.rope_scaling.factor == 2.0
    assert config.max_dynamic_patch == 12 and config.use_thumbnail


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("architectures",), ["LlavaForConditionalGeneration"], "architectures"),
        (("ps_version",), "v1", "ps_version"),
        (("vision_config", "model_type"), "intern_vit_6b", "intern_vit_patch"),
        (("llm_config", "architectures"), ["InternLM2ForCausalLM"], "InternLM2VEForCausalLM"),
        (("llm_config", "rope_scaling"), {"type": "yarn", "factor": 2.0}, "rope_scaling"),
        (("llm_config", "num_key_value_heads"), 3, "num_key_value_heads"),
        (("llm_config", "hidden_act"), "gelu", "hidden_act"),
        (("template",), "vicuna_v1.1", "template"),
    ],
)
def test_unsupported_configs_are_refused_by_name(raw, path, value, message):
    bad = copy.deepcopy(raw)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(bad)


def test_missing_llm_key_is_named(raw):
    del raw["llm_config"]["vocab_size"]
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig.from_dict(raw)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"no config\.json"):
        ModelConfig.load(tmp_path)
