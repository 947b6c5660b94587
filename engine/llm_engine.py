"""The engine: requests in, a step at a time, `RequestOutput`s out. No threads, no HTTP."""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from monovl.engine.block_pool import BlockPool
from monovl.engine.cuda_graphs import DecodeGraphs
from monovl.engine.detokenizer import TokenDecoder
from monovl.engine.grammar_compiler import CompilerBusy, CompilerClosed, GrammarCompiler
from monovl.engine.grammar_probe import ProbeUnavailable
from monovl.engine.inputs import PromptInputs
from monovl.engine.kv_pool import kv_pool_gib
from monovl.engine.model_runner import ModelRunner, StepLogits
from monovl.engine.output_processor import OutputProcessor
from monovl.engine.outputs import RequestOutput, TokenLogprob
from monovl.engine.request import Request
from monovl.engine.sampler import sample
from monovl.engine.sampling_params import SamplingParams
from monovl.engine.scheduler import ScheduledChunk, Scheduler
from monovl.engine.settings import flag, setting
from monovl.engine.step_tokens import StepTokens
from monovl.engine.structured_output import CACHE_GIB, GrammarBatch, GrammarError, Grammars, Vocabulary, new_matcher
from monovl.engine.vision_cache import VisionCache
from monovl.model.forward_batch import KVCache
from monovl.model.mono_internvl import MonoInternVL
from monovl.model.paged_attention import pick_decode_kernel

if TYPE_CHECKING:
    import xgrammar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings; those with a flag are `monovl serve`'s options too (engine/settings.py)."""

    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # None: from kv_cache_memory
    kv_cache_memory: float | None = setting(
        None,
        "GiB for the KV cache (default: room for --max-num-seqs contexts of 8k tokens, at most 90%% of the free "
        "GPU memory, or 2 GiB on the CPU)",
        positive=True,
    )
    kv_cache_fraction: float | None = setting(
        None,
        "instead, this fraction of the memory free after loading (device memory on CUDA, RAM on CPU)",
        positive=True,
    )
    max_num_seqs: int = setting(64, "requests running at once", minimum=1)
    max_num_batched_tokens: int | None = setting(
        None, "tokens per step, prefill chunks included (default: 8192 on CUDA, 512 on the CPU)", minimum=1
    )
    max_model_len: int | None = setting(
        None,
        "context limit (default: the config's max_position_embeddings times its RoPE scaling factor, as vLLM "
        "derives it; at most what the KV pool holds)",
        minimum=1,
    )
    long_prefill_token_threshold: int | None = setting(
        None,
        "most prefill tokens one request takes a step while others run; longer prompts are long (default and 0: "
        "--max-num-batched-tokens, so long prompts are those that need more than one step). Smaller shortens "
        "the steps beside a long prompt, at a cost in throughput (docs/reliability.md)",
        minimum=0,
    )
    max_num_partial_prefills: int = setting(
        1, "long prompts that prefill at once; the others wait, shorter ones go past them (vLLM's flag)", minimum=1
    )
    enable_prefix_caching: bool = setting(True, "turn off the prefix cache", flag="--no-prefix-caching", negate=True)
    vision_cache_memory: float = setting(0.25, "GiB of cached image embeddings", minimum=0)
    attention_backend: str = setting(
        "auto",
        "decode attention: the Triton paged kernel (auto: on CUDA) or the torch path",
        choices=("auto", "torch", "triton"),
    )
    cuda_graphs: bool = setting(
        True, "no CUDA graphs: run every decode step eagerly (as vLLM's flag)", flag="--enforce-eager", negate=True
    )
    cuda_graph_max_len: int = 8192  # longest context a captured decode step serves
    grammar_compile_timeout: float = setting(
        5.0,
        "seconds a structured output's grammar may take to compile; a slower schema is refused as too complex "
        "(400), and a compile that cannot start within it as busy (503)",
        positive=True,
    )
    grammar_compile_workers: int = setting(
        1, "grammars compiled at once, each first tried in a process of its own", minimum=1
    )
    grammar_cache_memory: float = setting(
        CACHE_GIB, "GiB of compiled grammars kept for reuse (least recently used dropped)", minimum=0
    )
    json_any_whitespace: bool = setting(
        False,
        "structured JSON outputs may put any whitespace between tokens (vLLM's default); without it, only the "
        "compact separators, so a model cannot pad an answer with whitespace until max_tokens",
    )

    def conflicts(self, device: torch.device) -> list[str]:
        """Settings that contradict each other on `device`, each said naming the flags."""
        found = []
        if self.kv_cache_memory is not None and self.kv_cache_fraction is not None:
            found.append(
                f"{flag(EngineConfig, 'kv_cache_memory')} and {flag(EngineConfig, 'kv_cache_fraction')} both size the "
                "KV cache: give one"
            )
        batched = self.batched_tokens(device)
        batched_flag = flag(EngineConfig, "max_num_batched_tokens")
        if batched < self.max_num_seqs:  # vLLM's rule: every running request needs its token in a step
            found.append(
                f"{batched_flag} {batched} is below {flag(EngineConfig, 'max_num_seqs')} {self.max_num_seqs}: a step "
                "could not give each running request its token"
            )
        threshold = self.long_prefill_token_threshold
        if threshold is not None and threshold > batched:
            found.append(
                f"{flag(EngineConfig, 'long_prefill_token_threshold')} {threshold} is above {batched_flag} {batched}, "
                "the most prefill tokens a step can take"
            )
        return found

    def batched_tokens(self, device: torch.device) -> int:
        """max_num_batched_tokens, or the device's default: a GPU runs a long chunk in about the time of a
        short one, a CPU's step grows with its tokens."""
        return self.max_num_batched_tokens or (8192 if device.type == "cuda" else 512)


class RequestError(ValueError):
    """A request the engine cannot take (too long for the context, a duplicate id)."""

    def __init__(self, param: str | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def __reduce__(self) -> tuple:  # it crosses to the server from an engine process
        return (RequestError, (self.param, str(self), self.code))


# Codes of refusals that say the server is busy or stopping, not that the request is wrong (503).
UNAVAILABLE = (CompilerBusy.code, ProbeUnavailable.code, CompilerClosed.code)
_GRAMMAR_POLL_S = 0.01  # how long a step with nothing to run waits for a grammar


def grammar_refusal(error: BaseException) -> RequestError:
    """A grammar compile's failure as the request's error, by the code its exception carries."""
    code = getattr(error, "code", None)
    if code is None:  # not one of the compiler's own errors
        return RequestError("response_format", f"cannot compile the constraint: {error}", GrammarError.code)
    return RequestError(None if code == CompilerClosed.code else "response_format", str(error), code)


def check_context(max_model_len: int, num_prompt_tokens: int | None, max_tokens: int | None) -> None:
    """Refuse a prompt that leaves no room to generate, or prompt + max_tokens beyond the context,
    in vLLM's words. `num_prompt_tokens` None: the prompt is not counted yet, only max_tokens is checked."""
    if num_prompt_tokens is None:
        if max_tokens is not None and max_tokens >= max_model_len:
            raise RequestError(
                "max_tokens",
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{max_tokens} output tokens, which leaves no room for the prompt. Please reduce the number of "
                "requested output tokens.",
                "context_length_exceeded",
            )
        return
    if num_prompt_tokens >= max_model_len:
        raise RequestError(
            "messages",
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{num_prompt_tokens} input tokens (images included), which leaves no room to generate. Please reduce "
            "the length of the input prompt.",
            "context_length_exceeded",
        )
    if max_tokens is not None and num_prompt_tokens + max_tokens > max_model_len:
        raise RequestError(
            "max_tokens",
            f"This model's maximum context length is {max_model_len} tokens. However, you requested {max_tokens} "
            f"output tokens and your prompt contains {num_prompt_tokens} input tokens, for a total of "
            f"{num_prompt_tokens + max_tokens} tokens. Please reduce the length of the input prompt or the number "
            "of requested output tokens.",
            "context_length_exceeded",
        )


@dataclass(frozen=True)
class RequestLimits:
    """What this engine can run, checked by the server before a response starts and by the engine
    when a request arrives."""

    max_model_len: int
    vocab_size: int
    structured_outputs: bool  # the tokenizer's pieces are known, so a grammar can be compiled

    def check(self, num_prompt_tokens: int | None, params: SamplingParams) -> None:
        """Raise RequestError for what the engine cannot run (None: the prompt is not counted yet)."""
        check_context(self.max_model_len, num_prompt_tokens, params.max_tokens)
        if params.top_k > self.vocab_size:
            raise RequestError(
                "top_k", f"top_k must be at most the vocabulary size, {self.vocab_size}; got {params.top_k}"
            )
        outside = [k for k in params.logit_bias if not 0 <= k < self.vocab_size]
        if outside:
            raise RequestError("logit_bias", f"logit_bias has token ids outside the vocabulary: {outside[:5]}")
        if params.structured_output is not None and not self.structured_outputs:
            raise RequestError("response_format", "this engine has no vocabulary for structured outputs")


@dataclass(frozen=True)
class TokenizerInfo:
    decoder: TokenDecoder
    stop_token_ids: tuple[int, ...]  # the template's and generation_config's; ignore_eos drops them
    img_context_id: int
    # Each id's piece for the grammar engine (Tokenizer.text_pieces); empty: no structured outputs.
    pieces: tuple[str, ...] = ()


class LLMEngine:
    def __init__(
        self, model: MonoInternVL, tokens: TokenizerInfo, config: EngineConfig | None = None, detokenize: bool = True
    ) -> None:
        """`detokenize`: outputs carry their text, and stop strings end completions; without it only
        token ids, for a caller that makes the text itself (a server's side of an engine process)."""
        self.config = config or EngineConfig()
        self.model = model
        self.tokens = tokens
        self.text = OutputProcessor(tokens.decoder, tokens.stop_token_ids) if detokenize else None
        llm = model.config.llm
        block_size = self.config.block_size
        num_blocks = self.config.num_kv_blocks or max(
            2, int(kv_pool_gib(self.config, model) * 2**30 // KVCache.bytes_per_block(llm, block_size, model.dtype))
        )
        # One block more than the pool hands out: the scratch block that CUDA-graph padding rows write.
        self.kv_cache = KVCache.allocate(llm, num_blocks + 1, block_size, model.dtype, model.device)
        self.block_pool = BlockPool(num_blocks, block_size, self.config.enable_prefix_caching)
        self.step_tokens = StepTokens()
        self.max_model_len = self._max_model_len(num_blocks * block_size)
        budget = self.config.batched_tokens(model.device)
        threshold = self._long_prefill_token_threshold()
        self.scheduler = Scheduler(
            self.block_pool,
            self.config.max_num_seqs,
            budget,
            self._rope_seed,
            long_prefill_token_threshold=threshold,
            max_num_partial_prefills=self.config.max_num_partial_prefills,
        )
        vision_cache = VisionCache(int(self.config.vision_cache_memory * 2**30))
        decode_kernel = pick_decode_kernel(self.config.attention_backend, model.device)
        graphs = None
        if self.config.cuda_graphs and model.device.type == "cuda" and decode_kernel is not None:
            graphs = DecodeGraphs(
                model,
                self.kv_cache,
                decode_kernel,
                scratch_block=num_blocks,
                max_batch=self.config.max_num_seqs,
                max_len=min(self.config.cuda_graph_max_len, self.max_model_len),
            )
        self.runner = ModelRunner(model, self.kv_cache, tokens.img_context_id, vision_cache, decode_kernel, graphs)
        self.grammars = self._grammars()
        self.grammar_compiler = None
        if self.grammars is not None:
            timeout, workers = self.config.grammar_compile_timeout, self.config.grammar_compile_workers
            self.grammar_compiler = GrammarCompiler(self.grammars, timeout, workers)
        self.grammar_batch = GrammarBatch()
        self.requests: dict[tuple[str, int], Request] = {}
        # Requests whose grammar is compiling: they reach the scheduler when it is ready.
        self.awaiting_grammar: dict[str, tuple[Future, PromptInputs, SamplingParams]] = {}

    def close(self) -> None:
        """Stop compiling grammars (a compile in flight is abandoned); the engine takes no more of them."""
        if self.grammar_compiler is not None:
            self.grammar_compiler.shutdown()

    # ------------------------------------------------------------------ requests in
    @property
    def limits(self) -> RequestLimits:
        """What a request must fit; fixed once the engine is built."""
        return RequestLimits(self.max_model_len, self.model.config.llm.vocab_size, self.grammars is not None)

    def compile_grammar(self, params: SamplingParams) -> Future[None]:
        """The request's grammar compiled (or found cached) off the calling thread, within the
        compile time limit; the future's error is a RequestError. Thread-safe."""
        answer: Future[None] = Future()
        if params.structured_output is None or self.grammar_compiler is None:
            answer.set_result(None)
            return answer

        def answered(compiling: Future) -> None:
            error = compiling.exception()
            if error is None:
                answer.set_result(None)
            else:
                answer.set_exception(grammar_refusal(error))

        self.grammar_compiler.submit(params.structured_output).add_done_callback(answered)
        return answer

    def add_request(self, request_id: str, prompt: PromptInputs, params: SamplingParams) -> None:
        """Take a request; one whose grammar is not compiled yet waits for it outside the scheduler."""
        if request_id in self.awaiting_grammar or any(key[0] == request_id for key in self.requests):
            raise RequestError(None, f"request id {request_id!r} is already running")
        self.limits.check(prompt.num_tokens, params)
        if params.max_tokens is None:  # as vLLM: the rest of the context
            params = replace(params, max_tokens=self.max_model_len - prompt.num_tokens)
        compiling = None
        if params.structured_output is not None and self.grammar_compiler is not None:
            compiling = self.grammar_compiler.submit(params.structured_output)
            if compiling.done() and compiling.exception() is not None:
                raise grammar_refusal(compiling.exception())
        if compiling is not None and not compiling.done():
            self.awaiting_grammar[request_id] = (compiling, prompt, params)
        else:
            self._admit(request_id, prompt, params, compiling.result() if compiling is not None else None)
        if self.text is not None:
            self.text.add(request_id, params)

    def _admit(
        self,
        request_id: str,
        prompt: PromptInputs,
        params: SamplingParams,
        compiled: xgrammar.CompiledGrammar | None,
    ) -> None:
        stop_ids = params.stop_ids(self.tokens.stop_token_ids)
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.model.device).manual_seed(params.seed + index)
            request = Request(
                request_id=request_id,
                index=index,
                prompt=prompt,
                params=params,
                stop_token_ids=stop_ids,
                generator=generator,
                grammar=new_matcher(compiled) if compiled is not None else None,
            )
            self.requests[request.key] = request
            self.scheduler.add(request)

    def _admit_compiled(self) -> list[RequestOutput]:
        """Admit the requests whose grammar is ready; those whose grammar failed finish with its error.
        With nothing else to run, wait a moment for one."""
        if not self.awaiting_grammar:
            return []
        if not self.requests:
            wait([entry[0] for entry in self.awaiting_grammar.values()], _GRAMMAR_POLL_S, FIRST_COMPLETED)
        outputs = []
        for request_id, (compiling, prompt, params) in list(self.awaiting_grammar.items()):
            if not compiling.done():
                continue
            del self.awaiting_grammar[request_id]
            error = compiling.exception()
            if error is None:
                self._admit(request_id, prompt, params, compiling.result())
                continue
            message = str(grammar_refusal(error))
            outputs += [_error_output(request_id, index, prompt.num_tokens, message) for index in range(params.n)]
        return outputs

    def abort_request(self, request_id: str, index: int | None = None) -> None:
        """Stop the request's completions (or only completion `index`) and free their blocks; they
        send no further output."""
        for key, request in list(self.requests.items()):
            if key[0] == request_id and index in (None, key[1]):
                request.finish("abort")
                self._retire(request)
        if index is None:
            self.awaiting_grammar.pop(request_id, None)
        if self.text is not None and index is None:
            self.text.remove(request_id)

    def has_unfinished(self) -> bool:
        return bool(self.requests or self.awaiting_grammar)

    def has_runnable(self) -> bool:
        """Whether a step has requests to run (not only grammars to wait for)."""
        return bool(self.requests)

    # ------------------------------------------------------------------ one step
    def step(self) -> list[RequestOutput]:
        """Run one step; each scheduled completion's output, with its text when this engine makes it."""
        outputs = self._step()
        if self.text is None:
            return outputs
        processed = self.text.process(outputs)
        for request_id, index in processed.stopped:  # a stop string ended it
            self.abort_request(request_id, index)
        return processed.outputs

    def _step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        outputs = self._admit_compiled()
        chunks = self.scheduler.schedule()
        for request in self.scheduler.unschedulable:
            request.finish("length")  # the whole KV pool cannot hold its context
            outputs.append(self._output(request))
        self.scheduler.unschedulable.clear()
        if not chunks:
            return outputs
        try:
            step = self.runner.execute(chunks)
        except Exception as error:  # one bad request must not fail the batch: find it by rerunning alone
            self.runner.check_device()
            return outputs + self._isolate_failure(chunks, error)
        outputs += self._postprocess(chunks, step)
        self.scheduler.step_took(time.perf_counter() - started)
        self.step_tokens.observe(sum(chunk.num_tokens for chunk in chunks))
        return outputs

    def _postprocess(self, chunks: list[ScheduledChunk], step: StepLogits) -> list[RequestOutput]:
        for found in step.prompt:
            request = found.request
            if not request.prompt_logprobs:  # the first prompt token has none
                request.prompt_logprobs = [None] * request.num_prompt_tokens
            request.prompt_logprobs[found.start + 1 : found.start + 1 + len(found.logprobs)] = found.logprobs
        logits = step.sample
        sampling = [c.request for c in chunks if c.samples]
        for chunk in chunks:
            chunk.request.num_computed_tokens += chunk.num_tokens
        if not sampling:
            return []
        try:
            self.grammar_batch.apply(logits, [r.grammar for r in sampling])
            result = sample(logits, sampling)
        except Exception:  # one request's sampling must not fail the others: sample each alone
            # A device fault queued by the forward surfaces at the first sync, which is here.
            self.runner.check_device()
            return [self._sample_alone(logits[b : b + 1], request) for b, request in enumerate(sampling)]
        return [
            self._append(request, token, logprob)
            for request, token, logprob in zip(sampling, result.token_ids, result.logprobs, strict=True)
        ]

    def _sample_alone(self, logits: torch.Tensor, request: Request) -> RequestOutput:
        try:
            self.grammar_batch.apply(logits, [request.grammar])
            result = sample(logits, [request])
        except Exception:
            log.exception("request %s failed while sampling", request.request_id)
            return self._fail(request, "internal error while sampling the next token")
        return self._append(request, result.token_ids[0], result.logprobs[0])

    def _append(self, request: Request, token: int, logprob: TokenLogprob | None) -> RequestOutput:
        if logprob is not None:
            request.new_logprobs.append(logprob)
        request.token_ids.append(token)
        if request.first_token_time is None:
            request.first_token_time = time.monotonic()
        try:
            self._check_finished(request, token)
            return self._output(request)
        except GrammarError as error:  # a grammar with no way on (its mask allowed no token)
            log.warning("request %s: %s", request.request_id, error)
            return self._fail(request, "the output constraint allows no further token")
        except Exception:  # one request's bookkeeping must not stop the others
            log.exception("request %s failed after sampling token %d", request.request_id, token)
            return self._fail(request, "internal error after sampling the next token")

    def _check_finished(self, request: Request, token: int) -> None:
        """Finish on a stop token, a finished grammar or the length; stop strings are the text's
        (engine/output_processor.py)."""
        grammar = request.grammar
        if grammar is not None and not grammar.accept_token(token):
            raise GrammarError(f"the grammar refused token {token}: its mask allowed none")
        done = grammar is not None and grammar.is_terminated()  # with ignore_eos too: nothing may follow
        if token in request.stop_token_ids or done:
            request.finish("stop")
        elif request.num_output_tokens >= request.params.max_tokens or request.num_tokens >= self.max_model_len:
            request.finish("length")

    def _output(self, request: Request) -> RequestOutput:
        first = request.num_emitted_tokens == 0
        new_ids = request.output_token_ids[request.num_emitted_tokens :]
        request.num_emitted_tokens = request.num_output_tokens
        logprobs, request.new_logprobs = request.new_logprobs, []
        output = RequestOutput(
            request_id=request.request_id,
            index=request.index,
            new_token_ids=new_ids,
            new_text="",
            new_logprobs=logprobs,
            finished=request.is_finished,
            finish_reason=request.finish_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_cached_tokens=request.num_cached_tokens,
            error=request.error,
            prompt_logprobs=(request.prompt_logprobs or [None] * request.num_prompt_tokens)
            if first and request.wants_prompt_logprobs
            else None,
            # With the first output too: where a stop string finishes the completion, its text's
            # side knows only what came before.
            timings=request.timings() if request.is_finished or first else None,
        )
        if request.is_finished:
            self._retire(request)
        return output

    def _fail(self, request: Request, error: str) -> RequestOutput:
        """End a request whose step failed; its output touches nothing that may have failed."""
        request.finish("error", error)
        self._retire(request)
        return _error_output(
            request.request_id,
            request.index,
            request.num_prompt_tokens,
            error,
            request.num_output_tokens,
            request.num_cached_tokens,
        )

    def _retire(self, request: Request) -> None:
        """Free a finished request's blocks and forget it."""
        self.scheduler.remove(request, keep_cached=request.finish_reason != "error")
        self.requests.pop(request.key, None)

    def _isolate_failure(self, chunks: list[ScheduledChunk], error: Exception) -> list[RequestOutput]:
        """Rerun each chunk alone; the ones that still fail are failed, the others go on."""
        if len(chunks) == 1:
            request = chunks[0].request
            log.exception("request %s failed", request.request_id, exc_info=error)
            return [self._fail(request, f"internal error while running the model: {type(error).__name__}")]
        outputs = []
        for chunk in chunks:
            try:
                step = self.runner.execute([chunk])
            except Exception as solo_error:  # this one fails alone too: it is the culprit
                outputs += self._isolate_failure([chunk], solo_error)
            else:
                outputs += self._postprocess([chunk], step)
        return outputs

    # ------------------------------------------------------------------ helpers
    def _max_model_len(self, pool_tokens: int) -> int:
        asked = self.config.max_model_len
        wanted = asked or self.model.config.llm.context_length
        if wanted > pool_tokens:
            log.log(
                logging.WARNING if asked else logging.INFO,
                "the KV pool holds %d tokens, fewer than the context of %d: requests are limited to %d tokens",
                pool_tokens,
                wanted,
                pool_tokens,
            )
        return min(wanted, pool_tokens)

    def _grammars(self) -> Grammars | None:
        if not self.tokens.pieces:
            return None
        vocab = self.model.config.llm.vocab_size  # the logits' width: rows past the tokenizer get no text
        pieces = (*self.tokens.pieces[:vocab], *[""] * (vocab - len(self.tokens.pieces)))
        vocabulary = Vocabulary(pieces, tuple(self.tokens.stop_token_ids))
        cache_bytes = int(self.config.grammar_cache_memory * 2**30)
        return Grammars(vocabulary, any_whitespace=self.config.json_any_whitespace, cache_bytes=cache_bytes)

    def _long_prefill_token_threshold(self) -> int:
        budget = self.config.batched_tokens(self.model.device)
        return min(self.config.long_prefill_token_threshold or budget, budget)

    def _rope_seed(self, request: Request) -> bytes:
        """Dynamic NTK rotates a long prompt's keys by its length; such blocks are only shared at that length."""
        llm = self.model.config.llm
        scaling = llm.rope_scaling
        if scaling and scaling.kind == "dynamic" and request.num_prompt_tokens > llm.max_position_embeddings:
            return f"ntk:{request.num_prompt_tokens}".encode()
        return b""

    @property
    def kv_cache_usage(self) -> float:
        return self.block_pool.usage

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free


def _error_output(
    request_id: str,
    index: int,
    num_prompt_tokens: int,
    error: str,
    num_output_tokens: int = 0,
    num_cached_tokens: int = 0,
) -> RequestOutput:
    """The last output of a completion that failed (or, its grammar refused, never ran)."""
    return RequestOutput(
        request_id=request_id,
        index=index,
        new_token_ids=[],
        new_text="",
        new_logprobs=[],
        finished=True,
        finish_reason="error",
        num_prompt_tokens=num_prompt_tokens,
        num_output_tokens=num_output_tokens,
        num_cached_tokens=num_cached_tokens,
        error=error,
    )
