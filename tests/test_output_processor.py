"""OutputProcessor: the engine's token outputs made text, and completions ended by stop strings."""

from dataclasses import replace

from monovl.engine.output_processor import OutputProcessor
from monovl.engine.outputs import RequestOutput, RequestTimings, TokenLogprob
from monovl.engine.sampling_params import SamplingParams
from tests.engine_helpers import FakeDecoder

EOS = 2  # the model's stop token in these tests; FakeDecoder decodes it as a control byte


def output(text: str, index: int = 0, emitted: int = 0, **fields) -> RequestOutput:
    """An engine output whose new tokens are `text`'s bytes, after `emitted` earlier tokens."""
    ids = list(text.encode()) if "new_token_ids" not in fields else fields.pop("new_token_ids")
    return RequestOutput(
        **{
            "request_id": "r",
            "index": index,
            "new_token_ids": ids,
            "new_text": "",
            "new_logprobs": [],
            "finished": False,
            "finish_reason": None,
            "num_prompt_tokens": 3,
            "num_output_tokens": emitted + len(ids),
            "num_cached_tokens": 0,
        }
        | fields
    )


def processor(**params) -> OutputProcessor:
    text = OutputProcessor(FakeDecoder(), (EOS,))
    text.add("r", SamplingParams(**params))
    return text


def test_text_comes_out_as_the_tokens_come_and_the_last_output_flushes_it():
    text = processor()
    first = text.process([output("ab")]).outputs
    last = text.process([output("c", emitted=2, finished=True, finish_reason="length")]).outputs
    assert [o.new_text for o in first + last] == ["ab", "c"] and last[0].finished
    assert [o.new_text_offsets for o in first + last] == [(0, 1), (2,)]
    assert len(text) == 0


def test_a_stop_string_cuts_the_output_after_the_token_that_completed_it_and_names_it():
    text = processor(stop=("XY",), logprobs=0)
    logprobs = [TokenLogprob(t, -1.0, []) for t in b"abXYcd"]
    first = TokenLogprob(ord("z"), -1.0, [])
    timings = RequestTimings(0.5, 0.25, 0.0)
    (held,) = text.process([output("z", new_logprobs=[first], timings=timings)]).outputs
    processed = text.process([output("abXYcd", emitted=1, new_logprobs=logprobs)])
    (cut,) = processed.outputs
    assert processed.stopped == [("r", 0)]
    assert (
        held.new_text == "" and cut.new_text == "zab" and cut.finished
    )  # "z" was held: it might start "XY" and cut.finish_reason == "stop"
    assert cut.new_token_ids == list(b"abXY") and cut.new_logprobs == logprobs[:4]
    assert cut.num_output_tokens == 5  # z, a, b, X, Y: what came after Y is not the completion's
    # each token where the completion's text has it, the one held included: z at 0, a at 1 ... Y at 4
    assert held.new_text_offsets == (0,) and cut.new_text_offsets == (1, 2, 3, 4)
    assert cut.timings.queued == 0.5 and cut.timings.prefill == 0.25 and cut.timings.decode >= 0
    # Whatever the engine still sends for it (a step already under way) is dropped.
    assert text.process([output("ef", emitted=7)]).outputs == [] and len(text) == 0


def test_the_first_output_keeps_no_timings_and_the_last_keeps_the_engine_s():
    text = processor()
    timings = RequestTimings(0.5, 0.25, 0.0)
    (first,) = text.process([output("a", timings=timings)]).outputs
    done = replace(timings, decode=1.0)
    (last,) = text.process([output("b", emitted=1, finished=True, finish_reason="length", timings=done)]).outputs
    assert first.timings is None and last.timings == done


def test_a_stop_token_is_not_text_but_a_grammar_s_last_token_is():
    text = processor()
    (stopped,) = text.process([output("", new_token_ids=[*b"ok", EOS], finished=True, finish_reason="stop")]).outputs
    assert stopped.new_text == "ok" and stopped.new_token_ids == [*b"ok", EOS]
    text = processor()  # a grammar that finished on "}" stops the completion with that token in it
    (closed,) = text.process([output("{}", finished=True, finish_reason="stop")]).outputs
    assert closed.new_text == "{}"
    text = processor(stop_token_ids=(ord("!"),), ignore_eos=True)  # EOS is text with ignore_eos
    (own,) = text.process(
        [output("", new_token_ids=[ord("a"), EOS, ord("!")], finished=True, finish_reason="stop")]
    ).outputs
    assert own.new_text == "a\x02"


def test_a_stop_string_ends_one_completion_while_the_others_go_on():
    text = processor(n=2, stop=("X",))
    processed = text.process([output("aX", index=0), output("bb", index=1)])
    assert processed.stopped == [("r", 0)]
    assert [(o.index, o.new_text, o.finished) for o in processed.outputs] == [(0, "a", True), (1, "bb", False)]
    later = text.process([output("c", index=0, emitted=2), output("Xc", index=1, emitted=2)])
    assert [(o.index, o.new_text, o.finish_reason) for o in later.outputs] == [(1, "", "stop")]
    assert len(text) == 0


def test_a_stop_string_in_an_output_the_engine_finished_needs_no_stopping():
    text = processor(stop=("X",))
    processed = text.process([output("aXb", finished=True, finish_reason="length")])
    assert processed.stopped == [] and processed.outputs[0].finish_reason == "stop"
    assert processed.outputs[0].new_text == "a"


def test_a_detokenizer_fault_fails_its_completion_only():
    text = OutputProcessor(FakeDecoder(), (EOS,))
    text.add("bad", SamplingParams())
    text.add("good", SamplingParams())

    def broken(token):
        raise RuntimeError("injected")

    text.detokenizer("bad").append = broken
    processed = text.process([replace(output("a"), request_id="bad"), replace(output("a"), request_id="good")])
    bad, good = processed.outputs
    assert bad.finish_reason == "error" and bad.error and processed.stopped == [("bad", 0)]
    assert good.new_text == "a" and not good.finished


def test_removed_requests_leave_nothing_and_their_outputs_are_dropped():
    text = processor(n=3)
    text.remove("r")
    assert len(text) == 0 and text.process([output("a", index=1)]).outputs == []
