"""What crosses between the engine's front end (engine/async_llm.py) and its core (engine/engine_core.py).

Each message is pickled whole onto one pipe each way; a request's image tiles travel as its
uint8 pixels inside `AddRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass

from monovl.engine.grammar_probe import PROBE_START_TIMEOUT_S
from monovl.engine.inputs import PromptInputs
from monovl.engine.llm_engine import LLMEngine, RequestLimits
from monovl.engine.outputs import RequestOutput
from monovl.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class EngineInfo:
    """What the server learns of its engine once it is built: the limits it checks requests by, and
    what the startup line reports."""

    limits: RequestLimits
    device: str
    dtype: str
    num_blocks: int
    block_size: int
    decode_attention: str  # "triton" or "torch"
    fast_path: str
    max_graph_batch: int | None  # the largest decode batch a CUDA graph serves; None: no graphs
    # How long the server waits for a grammar: the queue and the probe are each cut at the compile
    # time limit, the engine's own compile of a spec that passed the probe takes about as long.
    grammar_wait_s: float

    @classmethod
    def of(cls, engine: LLMEngine) -> EngineInfo:
        runner = engine.runner
        return cls(
            limits=engine.limits,
            device=str(engine.model.device),
            dtype=str(engine.model.dtype).removeprefix("torch."),
            num_blocks=engine.block_pool.num_blocks,
            block_size=engine.config.block_size,
            decode_attention="triton" if runner.decode_kernel is not None else "torch",
            fast_path=str(engine.model.fast),
            max_graph_batch=runner.graphs.sizes[-1] if runner.graphs is not None else None,
            grammar_wait_s=3 * engine.config.grammar_compile_timeout + PROBE_START_TIMEOUT_S,
        )


@dataclass(frozen=True)
class EngineStats:
    """The scheduler's and the KV pool's gauges after a step."""

    running: int
    waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_preemptions: int = 0  # since the start
    step_token_counts: tuple[int, ...] = ()  # steps per bucket of engine/step_tokens.py, since the start
    step_tokens_total: int = 0

    @classmethod
    def of(cls, engine: LLMEngine) -> EngineStats:
        scheduler, steps = engine.scheduler, engine.step_tokens
        return cls(
            len(scheduler.running),
            len(scheduler.waiting),
            engine.kv_cache_usage,
            engine.num_free_blocks,
            scheduler.num_preemptions,
            tuple(steps.counts),
            steps.total,
        )


# ---------------------------------------------------------------- server -> core
@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt: PromptInputs
    params: SamplingParams


@dataclass(frozen=True)
class AbortRequest:
    request_id: str
    index: int | None = None  # one completion (a stop string ended it); None: all of them


@dataclass(frozen=True)
class CompileGrammar:
    ticket: int
    params: SamplingParams


@dataclass(frozen=True)
class Shutdown:
    pass


# ---------------------------------------------------------------- core -> server
@dataclass(frozen=True)
class Ready:
    info: EngineInfo


@dataclass(frozen=True)
class BuildFailed:
    error: BaseException


@dataclass(frozen=True)
class Added:
    request_id: str
    error: BaseException | None  # a RequestError: the request was not taken


@dataclass(frozen=True)
class StepOutputs:
    outputs: list[RequestOutput]
    stats: EngineStats


@dataclass(frozen=True)
class Compiled:
    ticket: int
    error: BaseException | None


@dataclass(frozen=True)
class CoreDied:
    error: BaseException  # what stopped the loop (a DeviceError, say)
