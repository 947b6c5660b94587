"""Fair scheduling: a long prompt cannot hold a step's whole budget, nor the prefill queue."""

import itertools

import pytest

import monovl.engine.llm_engine as llm_engine
from monovl.engine.llm_engine import EngineConfig, LLMEngine, TokenizerInfo
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.chat_template import ChatMessage


@pytest.fixture(scope="module")
def tokens(preprocessor):
    return TokenizerInfo(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids), preprocessor.img_context_id)


def prompt(preprocessor, text: str):
    return preprocessor.process([ChatMessage.text("user", text)], [])


class Recorder:
    """Wraps the runner: the tokens each request got in each step. Steps take one fake millisecond
    a token on the engine's clock, so time-sharing is decided the same way on every machine."""

    def __init__(self, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[dict[str, int]] = []
        self.clock = 0.0
        execute = engine.runner.execute

        def recorded(chunks):
            self.steps.append({c.request.request_id: c.num_tokens for c in chunks})
            self.clock += 0.001 * sum(c.num_tokens for c in chunks)
            return execute(chunks)

        engine.runner.execute = recorded
        monkeypatch.setattr(llm_engine.time, "perf_counter", lambda: self.clock)


GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def test_a_short_chat_is_served_at_once_beside_a_long_prefill(tiny_model, tokens, preprocessor, monkeypatch):
    config = EngineConfig(num_kv_blocks=512, max_num_batched_tokens=256, long_prefill_token_threshold=64)
    engine = LLMEngine(tiny_model, tokens, config)
    recorder = Recorder(engine, monkeypatch)
    steps = recorder.steps
    long = prompt(preprocessor, "a long story " * 400)
    assert long.num_tokens > 1000
    engine.add_request("long", long, GREEDY)
    engine.step()
    engine.step()
    assert steps == [{"long": 256}, {"long": 256}]  # alone, it takes the whole budget
    engine.add_request(
        "short", prompt(preprocessor, "Hi!"), SamplingParams(temperature=0, max_tokens=600, ignore_eos=True)
    )
    first_token = None
    for k in range(1, 5):
        if any(o.request_id == "short" and o.new_token_ids for o in engine.step()):
            first_token = k
            break
    assert first_token == 1 and "long" not in steps[2]  # the short prompt's step is its own
    while ("short", 0) in engine.requests:
        engine.step()
    beside = steps[2:]
    assert all(step.get("long", 0) <= 64 for step in beside)
    # Each long chunk (65 fake ms with the short chat's decode) costs far more than a decode step
    # (1 ms): after one, steps without a long chunk run for about as long before the next.
    long_steps = [k for k, step in enumerate(beside) if "long" in step]
    assert len(long_steps) >= 3
    for start, end in itertools.pairwise(long_steps):
        chunk_time = sum(beside[start].values())
        between = sum(sum(step.values()) for step in beside[start + 1 : end])
        assert chunk_time / 2 <= between <= chunk_time


def test_one_long_prefill_at_a_time_and_short_prompts_pass_waiting_long_ones(
    tiny_model, tokens, preprocessor, monkeypatch
):
    config = EngineConfig(
        num_kv_blocks=1024, max_num_batched_tokens=256, long_prefill_token_threshold=64, max_num_partial_prefills=1
    )
    engine = LLMEngine(tiny_model, tokens, config)
    steps = Recorder(engine, monkeypatch).steps
    first, second = prompt(preprocessor, "first story " * 100), prompt(preprocessor, "second tale " * 100)
    engine.add_request("first", first, GREEDY)
    engine.add_request("second", second, GREEDY)
    engine.add_request("short", prompt(preprocessor, "Hello"), GREEDY)
    engine.step()
    assert set(steps[0]) == {"first", "short"}  # "second" waits for "first"; "short" goes past it
    for _ in range(100):
        engine.step()
        if "second" in steps[-1]:
            break
    # "second" began only once "first" had no more than a short prompt's tokens left
    assert "second" in steps[-1]
    assert sum(step.get("first", 0) for step in steps[:-1]) >= first.num_tokens - 64


def test_threshold_zero_lets_a_prompt_take_the_whole_budget_beside_others(
    tiny_model, tokens, preprocessor, monkeypatch
):
    config = EngineConfig(num_kv_blocks=512, max_num_batched_tokens=256, long_prefill_token_threshold=0)
    engine = LLMEngine(tiny_model, tokens, config)
    steps = Recorder(engine, monkeypatch).steps
    engine.add_request("long", prompt(preprocessor, "a long story " * 400), GREEDY)
    engine.add_request("short", prompt(preprocessor, "Hi!"), GREEDY)
    engine.step()
    assert steps == [{"short": steps[0]["short"], "long": 256 - steps[0]["short"]}]  # short work first


def test_by_default_a_prompt_is_long_when_it_needs_more_than_one_step(tiny_model, tokens):
    for threshold in (None, 0, 4096):
        config = EngineConfig(num_kv_blocks=64, max_num_batched_tokens=512, long_prefill_token_threshold=threshold)
        engine = LLMEngine(tiny_model, tokens, config)
        assert engine.scheduler.long_prefill_token_threshold == 512
        assert engine.scheduler.max_num_partial_prefills == 1


def test_two_chats_with_one_long_prompt_compute_it_once(tiny_model, tokens, preprocessor, monkeypatch):
    config = EngineConfig(num_kv_blocks=512, max_num_batched_tokens=256, long_prefill_token_threshold=64)
    engine = LLMEngine(tiny_model, tokens, config)
    steps = Recorder(engine, monkeypatch).steps
    same = prompt(preprocessor, "the same long question " * 60)
    engine.add_request("first", same, GREEDY)
    engine.add_request("second", same, GREEDY)
    while ("second", 0) not in engine.requests or engine.requests[("second", 0)].num_computed_tokens == 0:
        engine.step()
    # the second waited while the first computed the prompt, then found all of it cached
    assert engine.requests[("second", 0)].num_cached_tokens == (same.num_tokens - 1) // 16 * 16
    assert sum(step.get("second", 0) for step in steps) <= 16


def plain_request(name: str, tokens: list[int]):
    from monovl.engine.inputs import PromptInputs
    from monovl.engine.request import Request

    return Request(name, 0, PromptInputs("", tokens, [], []), GREEDY, frozenset())


def run_step(chunks) -> None:
    """What the engine does after a forward: the chunks' tokens are computed, sampling ones get a token."""
    for chunk in chunks:
        chunk.request.num_computed_tokens += chunk.num_tokens
        if chunk.samples:
            chunk.request.token_ids.append(7)


def test_a_step_that_preempts_takes_the_last_admitted_and_admits_no_one_after(monkeypatch):
    # Short chats decode beside long prompts in a pool too small for all: preemptions happen. Each
    # victim is the most recently admitted running request, and once a step has preempted, no waiting
    # request starts in it (the pool is full: it would only preempt again).
    from monovl.engine.block_pool import BlockPool
    from monovl.engine.request import RequestStatus
    from monovl.engine.scheduler import Scheduler

    pool = BlockPool(22, block_size=4, enable_prefix_caching=False)
    scheduler = Scheduler(pool, 8, 32, rope_seed=lambda r: b"")
    events: list[tuple[str, str]] = []
    preempt, scheduled = scheduler._preempt, scheduler._scheduled

    def recorded_preempt(request):
        assert request is scheduler.running[-1]
        events.append(("preempt", request.request_id))
        preempt(request)

    def recorded_scheduled(request, num_tokens):
        events.append(("schedule", request.request_id))
        return scheduled(request, num_tokens)

    monkeypatch.setattr(scheduler, "_preempt", recorded_preempt)
    monkeypatch.setattr(scheduler, "_scheduled", recorded_scheduled)
    lengths = (6, 40, 20, 6, 40, 3, 20)
    requests = [plain_request(f"r{k}", [k * 100 + i for i in range(n)]) for k, n in enumerate(lengths)]
    for r in requests:
        scheduler.add(r)
    preemptions = 0
    for _ in range(200):
        waiting = {r.request_id for r in scheduler.waiting}
        events.clear()
        chunks = scheduler.schedule()
        kinds = [kind for kind, _ in events]
        if "preempt" in kinds:
            preemptions += kinds.count("preempt")
            after = events[kinds.index("preempt") :]
            assert not {name for kind, name in after if kind == "schedule"} & waiting, events
        run_step(chunks)
        for r in [c.request for c in chunks if c.request.num_tokens >= c.request.num_prompt_tokens + 12]:
            scheduler.remove(r)  # finished after 12 tokens
            r.status = RequestStatus.FINISHED
        if not scheduler.running and not scheduler.waiting:
            break
    assert preemptions >= 1 and all(r.status is RequestStatus.FINISHED for r in requests)
