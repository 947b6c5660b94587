"""The vectorized sampler against the definitions, row by row."""

import pytest
import torch

from monovl.engine.detokenizer import IncrementalDetokenizer
from monovl.engine.inputs import PromptInputs
from monovl.engine.request import Request
from monovl.engine.sampler import apply_penalties, sample, top_k_top_p_min_p
from monovl.engine.sampling_params import SamplingParams, SamplingParamsError
from tests.engine_helpers import FakeDecoder


def request(params: SamplingParams, prompt=(1, 5, 6), outputs=(), seed=None) -> Request:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    r = Request("r", 0, PromptInputs("", list(prompt), [], []), params, frozenset(), generator=generator)
    r.token_ids += list(outputs)
    return r


def test_greedy_rows_take_the_argmax_and_report_raw_logprobs():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [2.0, 0.0, 0.0, 5.0]])
    out = sample(logits, [request(SamplingParams(temperature=0, logprobs=2))] * 2)
    assert out.token_ids == [1, 3]
    expected = torch.log_softmax(logits, -1)
    assert out.logprobs[0].logprob == pytest.approx(float(expected[0, 1]))
    assert [i for i, _ in out.logprobs[1].top_logprobs] == [3, 0]


def test_logit_bias_and_penalties():
    logits = torch.tensor([[1.0, 2.0, 3.0, -2.0, 0.5]])
    biased = sample(logits, [request(SamplingParams(temperature=0, logit_bias={0: 100.0}))])
    assert biased.token_ids == [0]
    params = SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    r = request(params, prompt=(3,), outputs=(2, 2, 4))
    penalized = apply_penalties(logits, [r])[0]
    # token 2: seen, positive -> 3/2, then -0.25*2 - 0.5; token 3: seen (prompt), negative -> -2*2
    # token 4: seen, positive -> 0.5/2 - 0.25 - 0.5; tokens 0 and 1 untouched
    assert penalized.tolist() == pytest.approx([1.0, 2.0, 1.5 - 0.5 - 0.5, -4.0, 0.25 - 0.25 - 0.5])


def test_top_k_top_p_min_p_keep_the_defined_sets():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))

    def kept(params):
        return torch.isfinite(top_k_top_p_min_p(logits, [request(params)])[0]).nonzero().squeeze(1).tolist()

    assert kept(SamplingParams(top_k=2)) == [0, 1]
    assert kept(SamplingParams(top_p=0.75)) == [0, 1, 2]  # 0.4 + 0.3 < 0.75 <= 0.9
    assert kept(SamplingParams(top_p=0.7)) == [0, 1]
    assert kept(SamplingParams(top_p=0.01)) == [0]
    assert kept(SamplingParams(min_p=0.6)) == [0, 1]  # p >= 0.6 * 0.4
    assert kept(SamplingParams()) == [0, 1, 2, 3]


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(probs).expand(4000, 4).contiguous()
    r = request(SamplingParams(temperature=1.0))
    counts = torch.bincount(torch.tensor(sample(logits, [r] * 4000).token_ids), minlength=4).float() / 4000
    assert torch.allclose(counts, probs, atol=0.03) and counts[3] == 0


def test_seeded_rows_ignore_their_neighbours():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0)
    first = sample(logits, [request(params), request(params, seed=7), request(params)]).token_ids[1]
    for _ in range(3):
        other = torch.randn(3, 50)
        other[1] = logits[1]
        assert sample(other, [request(params), request(params, seed=7), request(params)]).token_ids[1] == first


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1.0),
        ("temperature", 3.0),
        ("top_p", 0.0),
        ("top_k", -2),
        ("n", 0),
        ("max_tokens", 0),
        ("logprobs", 21),
        ("presence_penalty", 2.5),
        ("repetition_penalty", 0.0),
        ("min_p", 1.5),
        ("stop", ("",)),
    ],
)
def test_out_of_range_parameters_name_the_parameter(field, value):
    with pytest.raises(SamplingParamsError) as error:
        SamplingParams(**{field: value})
    assert error.value.param == field


def feed(detok: IncrementalDetokenizer, text: str) -> tuple[list[str], str | None]:
    deltas, stop = [], None
    for byte in text.encode():
        stop = detok.append(byte)
        deltas.append(detok.take_delta(stop is not None))
        if stop:
            break
    return deltas, stop


def test_multibyte_characters_are_never_split():
    detok = IncrementalDetokenizer(FakeDecoder())
    deltas, _ = feed(detok, "a图🙂b")
    assert "".join(deltas) == "a图🙂b" and all("\ufffd" not in d for d in deltas)
    assert deltas[1:3] == ["", ""]  # the first two bytes of 图 are held


def test_stop_strings_are_held_until_they_cannot_match_and_never_emitted():
    detok = IncrementalDetokenizer(FakeDecoder(), stop=("STOP",))
    deltas, stop = feed(detok, "xxSTxSTOPyy")
    assert stop == "STOP" and "".join(deltas) == "xxSTx"
    assert all("STOP" not in d for d in deltas)
    detok = IncrementalDetokenizer(FakeDecoder(), stop=("\n\n", "end"))
    deltas, stop = feed(detok, "one\ntwo\n\nthree")
    assert stop == "\n\n" and "".join(deltas) == "one\ntwo"


def test_finishing_flushes_held_text():
    detok = IncrementalDetokenizer(FakeDecoder(), stop=("STOP",))
    deltas, _ = feed(detok, "abcST")
    assert "".join(deltas) == "ab"  # "cST" might still become "...STOP"
    detok.flush()
    assert detok.take_delta(finished=True) == "cST"


def test_temperature_shapes_the_distribution_before_top_p_and_min_p_cut_it():
    # softmax([2, 1, 0]) is [0.665, 0.245, 0.090]: top_p 0.7 keeps two tokens. At temperature 0.5 the
    # tempered distribution is [0.867, 0.117, 0.016], so top_p 0.7 keeps the first alone; min_p 0.2
    # (of the top probability) keeps two at temperature 1 and one at 0.5.
    logits = torch.tensor([2.0, 1.0, 0.0]).expand(400, 3).contiguous()
    for params in (SamplingParams(temperature=0.5, top_p=0.7), SamplingParams(temperature=0.5, min_p=0.2)):
        drawn = sample(logits, [request(params)] * 400).token_ids
        assert set(drawn) == {0}, params
    for params in (SamplingParams(temperature=1.0, top_p=0.7), SamplingParams(temperature=1.0, min_p=0.2)):
        drawn = sample(logits, [request(params)] * 400).token_ids
        assert set(drawn) == {0, 1}, params
    hot = sample(logits, [request(SamplingParams(temperature=2.0, top_p=0.85))] * 400).token_ids
    assert set(hot) == {0, 1, 2}  # tempered flatter, [0.51, 0.31, 0.19]: top_p 0.85 needs all three
