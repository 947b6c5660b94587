"""Build mixed workloads and run an LLMEngine to completion, for the engine tests."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from monovl.engine.async_llm import AsyncLLM
from monovl.engine.inputs import PromptInputs
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.processor import Preprocessor
from tests.conftest import png_bytes


@dataclass
class Completion:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    error: str | None = None


class FakeDecoder:
    """Each id is one byte of UTF-8; a partial character decodes to U+FFFD, as sentencepiece does."""

    special_ids = frozenset({0})

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i not in self.special_ids).decode("utf-8", errors="replace")


def run(engine: LLMEngine, arrivals: dict[int, list[tuple[str, PromptInputs, SamplingParams]]], max_steps=5000):
    """Add requests at the given step numbers, step until all finish; completions by (id, index)."""
    results: dict[tuple[str, int], Completion] = defaultdict(Completion)
    step = 0
    while step <= max(arrivals, default=0) or engine.has_unfinished():
        for request_id, prompt, params in arrivals.get(step, []):
            engine.add_request(request_id, prompt, params)
        for output in engine.step():
            done = results[(output.request_id, output.index)]
            done.token_ids += output.new_token_ids
            done.text += output.new_text
            done.logprobs += output.new_logprobs
            done.num_cached_tokens = output.num_cached_tokens
            if output.finished:
                done.finish_reason, done.error = output.finish_reason, output.error
        step += 1
        assert step < max_steps, "engine made no progress"
    assert engine.num_free_blocks == engine.block_pool.num_blocks, "KV blocks leaked"
    return dict(results)


def greedy_tokens(engine: LLMEngine, prompts: list[PromptInputs], max_tokens: int) -> dict[str, list[int]]:
    """The prompts as requests "0", "1", ... arriving together; each one's greedy token ids."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    done = run(engine, {0: [(str(k), prompt, params) for k, prompt in enumerate(prompts)]})
    return {request_id: completion.token_ids for (request_id, _), completion in done.items()}


def mixed_workload(pre: Preprocessor) -> list[tuple[str, PromptInputs, SamplingParams]]:
    """16 requests: text, images of 1 to 6 tiles, two images, multi-turn, lengths 3 to 24 tokens."""
    images = {
        "small": pre.load_image(png_bytes(200, 200, seed=1)),  # 1 tile
        "wide": pre.load_image(png_bytes(900, 400, seed=2)),  # 3 tiles
        "tall": pre.load_image(png_bytes(400, 1300, seed=3)),  # 4 tiles
        "big": pre.load_image(png_bytes(1000, 1000, seed=4)),  # 5 tiles
        "strip": pre.load_image(png_bytes(2300, 450, seed=5)),  # 6 tiles
    }
    text = ChatMessage.text
    prompts = []
    for question in ["Hello, who are you?", "Tell me a story about a cat.", "2 + 2 = ?", "请描述一下"]:
        prompts.append(([text("user", question)], []))
    for k, name in enumerate(images):
        prompts.append(([ChatMessage("user", (ImagePart(0), TextPart(f"Describe image {k}.")))], [images[name]]))
    prompts.append(
        ([ChatMessage("user", (ImagePart(0), ImagePart(1), TextPart("Compare.")))], [images["small"], images["wide"]])
    )
    history = [
        ChatMessage("user", (ImagePart(0), TextPart("What is this?"))),
        text("assistant", "A picture of noise."),
        text("user", "Are you sure?"),
    ]
    prompts.append((history, [images["wide"]]))
    prompts.append(
        ([text("system", "Be brief."), text("user", "Hi"), text("assistant", "Hello!"), text("user", "Bye")], [])
    )
    prompts.append(([text("user", "A much longer question " * 12)], []))
    prompts.append(([ChatMessage("user", (ImagePart(0), TextPart("Again the big one.")))], [images["big"]]))
    capped = pre.load_image(png_bytes(2300, 450, seed=5), max_tiles=1)
    prompts.append(([ChatMessage("user", (ImagePart(0), TextPart("One tile only.")))], [capped]))
    prompts.append(([text("user", "Hello, who are you?")], []))  # same prompt as request 0: a prefix-cache hit
    workload = []
    for k, (messages, imgs) in enumerate(prompts):
        params = SamplingParams(temperature=0.0, max_tokens=3 + (7 * k) % 22, logprobs=2)
        workload.append((f"req-{k}", pre.process(messages, imgs), params))
    assert len(workload) == 16
    return workload


def solo_results(model, tokens, workload) -> dict[tuple[str, int], Completion]:
    engine = LLMEngine(model, tokens, EngineConfig(num_kv_blocks=512, enable_prefix_caching=False))
    results = {}
    for request_id, prompt, params in workload:
        results.update(run(engine, {0: [(request_id, prompt, params)]}))
    return results


async def blocks_free_after_leaving(engine: AsyncLLM, prompt: PromptInputs, num_blocks: int) -> bool:
    """Leave a long stream after its first token: whether it held blocks then, and every block is
    free again within two seconds (its request aborted in the core, wherever the core runs)."""
    stream = engine.generate("leaver", prompt, SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
    async for output in stream:
        if output.new_token_ids:
            break
    held = engine.stats().num_free_blocks < num_blocks
    await stream.aclose()
    for _ in range(200):
        stats = engine.stats()
        if stats.num_free_blocks == num_blocks and stats.running == stats.waiting == 0:
            return held
        await asyncio.sleep(0.01)
    return False
