"""Structured outputs through the server: random weights speak valid JSON only because of the grammar."""

import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from monovl.engine.structured_output import GrammarError, Grammars, StructuredOutput, Vocabulary
from monovl.preprocessing.tokenizer import Tokenizer

USER = [{"role": "user", "content": "Describe a person."}]


class Pet(BaseModel):
    kind: str = Field(json_schema_extra={"enum": ["cat", "dog", "bird"]})
    name: str = Field(max_length=12)


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int
    height_m: float
    friendly: bool
    pets: list[Pet] = Field(max_length=3)


def person_schema() -> dict:
    return openai.lib._pydantic.to_strict_json_schema(Person)


def test_json_schema_answers_parse_and_validate_plain_streamed_n_and_seeded(mono_client):
    answer = mono_client.chat.completions.parse(
        model="mono", messages=USER, response_format=Person, n=4, temperature=1.0, seed=7, max_tokens=400
    )
    for choice in answer.choices:
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Person)
        jsonschema.validate(json.loads(choice.message.content), person_schema())
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema(), "strict": True}}
    chunks = mono_client.chat.completions.create(
        model="mono", messages=USER, response_format=fmt, n=2, temperature=1.0, seed=7, max_tokens=400, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    for index, text in texts.items():  # the same seed gives the same answers, streamed or not
        assert text == answer.choices[index].message.content
        jsonschema.validate(json.loads(text), person_schema())


def quote_and_brace_bias(tiny_dir) -> dict[str, int]:
    """Random weights would write one string for ever; this bias makes closing likely, not valid."""
    pieces = Tokenizer(tiny_dir).text_pieces()
    return {str(i): 8 for i, p in enumerate(pieces) if p in ("<0x22>", "<0x7D>", "<0x5D>") or p in ('"', "}", "]")}


def test_json_object_answers_are_objects(mono_client, tiny_dir):
    bias = quote_and_brace_bias(tiny_dir)
    answer = mono_client.chat.completions.create(
        model="mono",
        messages=USER,
        response_format={"type": "json_object"},
        logit_bias=bias,
        n=6,
        temperature=1.0,
        seed=3,
        max_tokens=300,
    )
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content), dict)
    # Without the grammar the same bias gives no JSON at all.
    free = mono_client.chat.completions.create(
        model="mono", messages=USER, logit_bias=bias, temperature=1.0, seed=3, max_tokens=30
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content)


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_choice": ["yes", "no", "maybe so"]}, lambda t: t in ("yes", "no", "maybe so")),
        ({"guided_regex": r"[0-9]{3}-[a-z]{2,4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", t)),
        ({"structured_outputs": {"choice": ["left", "right"]}}, lambda t: t in ("left", "right")),
        ({"structured_outputs": {"regex": r"(ab|cd)+!"}}, lambda t: re.fullmatch(r"(ab|cd)+!", t)),
        ({"structured_outputs": {"grammar": 'root ::= "[" ("x" | "y")+ "]"'}}, lambda t: re.fullmatch(r"\[[xy]+\]", t)),
        ({"guided_json": {"type": "integer", "minimum": 0, "maximum": 99}}, lambda t: 0 <= json.loads(t) <= 99),
    ],
)
def test_vllm_constraints(mono_client, extra, check):
    answer = mono_client.chat.completions.create(
        model="mono", messages=USER, n=3, temperature=1.0, seed=1, max_tokens=200, extra_body=extra
    )
    for choice in answer.choices:
        assert choice.finish_reason == "stop" and check(choice.message.content), choice.message.content


def test_stop_strings_and_repeated_prompts_keep_the_grammar(mono_client):
    # The same prompt twice: the second is served from the prefix cache and stays constrained.
    for _ in range(2):
        answer = mono_client.chat.completions.create(
            model="mono", messages=USER, temperature=0, max_tokens=50, extra_body={"guided_regex": "a{3}b{40}"}
        )
        assert answer.choices[0].message.content == "aaa" + "b" * 40
    cut = mono_client.chat.completions.create(
        model="mono", messages=USER, temperature=0, max_tokens=50, stop=["bb"], extra_body={"guided_regex": "a{3}b{40}"}
    )
    assert cut.choices[0].message.content == "aaa" and cut.choices[0].finish_reason == "stop"


def post(mono_server, body) -> httpx.Response:
    return httpx.post(f"{mono_server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 5, **body})


def assert_400(response: httpx.Response, param: str, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_what_cannot_be_honoured_is_a_400_naming_it(mono_server):
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    assert_400(post(mono_server, {"response_format": bad_schema}), "response_format.json_schema.schema", "strin")
    assert_400(post(mono_server, {"guided_regex": "(ab"}), "guided_regex", "parenthesis")
    assert_400(
        post(mono_server, {"structured_outputs": {"grammar": "root ::= foo"}}), "structured_outputs.grammar", "foo"
    )
    assert_400(post(mono_server, {"guided_json": "{not json"}), "guided_json", "not valid JSON")
    two = {"response_format": {"type": "json_object"}, "guided_regex": "a+"}
    assert_400(post(mono_server, two), "guided_regex", "only one output constraint")
    response = post(mono_server, {"response_format": {"type": "yaml"}})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("response_format")
    # The server keeps serving.
    assert post(mono_server, {"response_format": {"type": "text"}}).status_code == 200


def test_unknown_fields_are_accepted_and_logged_known_ones_it_cannot_honour_are_400s(mono_server):
    assert post(mono_server, {"frobnicate": {"deep": [1, 2]}, "x_client_tag": "a"}).status_code == 200
    assert "ignored: ['frobnicate', 'x_client_tag']" in mono_server.output()
    assert post(mono_server, {"metadata": {"a": "b"}, "store": False, "modalities": ["text"]}).status_code == 200
    assert_400(post(mono_server, {"modalities": ["text", "audio"]}), "modalities", "text only")
    assert_400(post(mono_server, {"audio": {"voice": "alloy", "format": "wav"}}), "audio", "not supported")
    assert_400(post(mono_server, {"functions": [{"name": "f"}]}), "functions", "send tools")


def test_grammar_vocabulary_has_no_raw_control_characters(tiny_dir):
    """JSON strings may not hold raw control characters, though xgrammar's length-limited string rule
    lets byte pieces in; the JSON vocabulary leaves them out."""
    pieces = Tokenizer(tiny_dir).text_pieces()
    grammars = Grammars(Vocabulary(pieces, (2,)))
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 5}}, "required": ["s"]}
    matcher = grammars.matcher(StructuredOutput.json_schema(schema))
    assert matcher.accept_string('{"s": "a')
    control = pieces.index("<0x03>")
    assert not matcher.accept_token(control)
    assert matcher.accept_token(pieces.index("<0x41>"))
    with pytest.raises(GrammarError, match="Unsupported type"):
        grammars.compile(StructuredOutput.json_schema({"type": "strin"}))


def test_constrained_rows_after_unconstrained_ones_are_masked_and_end_with_their_grammar(tiny_dir, preprocessor):
    """A batch whose constrained requests sit behind unconstrained rows (the bitmask must be filled
    at the constrained rows' own indices), with ignore_eos (the grammar's end is read once the
    sampled token is accepted, and ends the request without any stop token)."""
    from monovl.checkpoint import build_engine
    from monovl.engine.llm_engine import EngineConfig
    from monovl.engine.sampling_params import SamplingParams
    from tests.engine_helpers import mixed_workload

    engine = build_engine(tiny_dir, "float32", "cpu", "auto", EngineConfig(num_kv_blocks=512))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    constrained = {
        "choice": (StructuredOutput.choice(["yes", "no"]), lambda text: text in ("yes", "no")),
        "schema": (StructuredOutput.json_schema(schema), lambda text: jsonschema.validate(json.loads(text), schema)),
    }
    try:
        prompts = [prompt for _, prompt, _ in mixed_workload(preprocessor)[:4]]
        for grammar, _ in constrained.values():  # compiled and cached: the requests join the first step
            engine.compile_grammar(SamplingParams(structured_output=grammar)).result(timeout=120)
        for k, prompt in enumerate(prompts[:3]):
            engine.add_request(f"plain-{k}", prompt, SamplingParams(max_tokens=60, ignore_eos=True, seed=k))
        for k, (name, (grammar, _)) in enumerate(constrained.items()):
            params = SamplingParams(max_tokens=40, ignore_eos=True, temperature=1.0, seed=k, structured_output=grammar)
            engine.add_request(name, prompts[3], params)
        batches = []
        engine.grammar_batch.apply = lambda logits, matchers, apply=engine.grammar_batch.apply: (
            batches.append([m is not None for m in matchers]) or apply(logits, matchers)
        )
        texts, reasons = {}, {}
        while engine.has_unfinished():
            for output in engine.step():
                texts[output.request_id] = texts.get(output.request_id, "") + output.new_text
                if output.finished:
                    reasons[output.request_id] = (output.finish_reason, output.error)
        for name, (_, check) in constrained.items():
            assert reasons[name] == ("stop", None), (name, reasons[name], texts[name])
            check(texts[name])
        assert all(reasons[f"plain-{k}"] == ("length", None) for k in range(3))
        assert [False, False, False, True, True] in batches  # the constrained rows came after the others
    finally:
        engine.close()
