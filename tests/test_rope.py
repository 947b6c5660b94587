import pytest
import torch

from monovl.model.config import LLMConfig, RopeScaling
from monovl.model.rope import RotaryEmbedding, apply_rotary
from tests.naive_math import rope_angles, rotate_pairs


def llm(head_dim=16, scaling=None, max_pos=64, theta=10000.0) -> LLMConfig:
    return LLMConfig(
        vocab_size=10,
        hidden_size=head_dim * 2,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        rms_norm_eps=1e-6,
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=max_pos,
        bias=False,
    )


def rotated(config: LLMConfig, x: torch.Tensor, positions: list[int], rope_lens: list[int] | None = None):
    rotary = RotaryEmbedding(config)
    lens = torch.tensor(rope_lens) if rope_lens is not None else None
    cos, sin = rotary.cos_sin(torch.tensor(positions), lens)
    return apply_rotary(x, cos, sin)


@pytest.fixture
def x():
    return torch.randn(6, 3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)


def test_plain_rope_matches_pairwise_rotation(x):
    positions = [0, 1, 5, 17, 63, 200]  # 200 lies past the table built at start
    expected = rotate_pairs(x.double(), rope_angles(positions, 16, 10000.0))
    torch.testing.assert_close(rotated(llm(), x, positions).double(), expected, rtol=1e-5, atol=1e-5)


def test_linear_scaling_divides_positions(x):
    positions = [0, 3, 8, 40, 41, 90]
    config = llm(scaling=RopeScaling("linear", 4.0))
    expected = rotate_pairs(x.double(), rope_angles(positions, 16, 10000.0, linear_factor=4.0))
    torch.testing.assert_close(rotated(config, x, positions).double(), expected, rtol=1e-5, atol=1e-5)


def test_dynamic_scaling_is_plain_up_to_max_positions(x):
    positions = [0, 1, 2, 30, 50, 63]
    config = llm(scaling=RopeScaling("dynamic", 2.0))
    torch.testing.assert_close(rotated(config, x, positions, [64] * 6), rotated(llm(), x, positions, [64] * 6))


def test_dynamic_scaling_is_off_for_sequences_shorter_than_max_positions(x):
    # At exactly max_position_embeddings the dynamic base equals the plain one; below it no scaling
    # may happen at all, whatever the factor.
    positions = [0, 3, 9, 20, 30, 39]
    for rope_lens in ([40] * 6, [63] * 6, [10, 10, 10, 25, 31, 40]):
        config = llm(scaling=RopeScaling("dynamic", 4.0))
        torch.testing.assert_close(rotated(config, x, positions, rope_lens), rotated(llm(), x, positions))


def test_dynamic_scaling_rescales_base_from_each_tokens_sequence_length(x):
    # Prompt of 100 tokens (> 64) then a decoded token at position 100 (sequence length 101).
    positions = [0, 7, 50, 99, 99, 100]
    rope_lens = [100, 100, 100, 100, 100, 101]
    factor, d, max_pos = 2.0, 16, 64
    config = llm(scaling=RopeScaling("dynamic", factor), max_pos=max_pos)
    out = rotated(config, x, positions, rope_lens).double()
    for row, (pos, seq_len) in enumerate(zip(positions, rope_lens, strict=True)):
        base = 10000.0 * (factor * seq_len / max_pos - (factor - 1)) ** (d / (d - 2))
        expected = rotate_pairs(x[row : row + 1].double(), rope_angles([pos], d, base))
        torch.testing.assert_close(out[row : row + 1], expected, rtol=1e-5, atol=1e-5)
    # the same position under two sequence lengths gets two different rotations
    assert not torch.allclose(out[3], rotated(config, x, [99], [101])[0].double().expand_as(out[3]))
