"""Concurrent streaming chats with a share of clients that leave early (tests and the reliability run)."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    f"Chat {k}: tell me about the picture of a {w}." for k, w in enumerate(["cat", "dog", "tree", "house", "car"])
]


@dataclass
class RoundResult:
    completed: int = 0
    disconnected: int = 0
    server_errors: int = 0
    wrong_answers: int = 0
    other_errors: list[str] = field(default_factory=list)


def body(prompt: str, max_tokens: int) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
    }


async def one_chat(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, leave_after: int | None):
    """The streamed text, or None if this client left after `leave_after` events."""
    text, events = [], 0
    async with client.stream("POST", url, json=body(prompt, max_tokens)) as response:
        if response.status_code != 200:
            return response.status_code
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            if leave_after is not None and events >= leave_after:
                return None
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return 500
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


async def run_round(
    base_url: str, expected: dict[str, str], streams: int, leave_share: float, max_tokens: int, seed: int
) -> RoundResult:
    rng = random.Random(seed)
    url = f"{base_url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    result = RoundResult()
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        plans = [
            (rng.choice(PROMPTS), rng.randint(1, 4) if rng.random() < leave_share else None) for _ in range(streams)
        ]
        outcomes = await asyncio.gather(
            *(one_chat(client, url, p, max_tokens, leave) for p, leave in plans), return_exceptions=True
        )
    for (prompt, _), outcome in zip(plans, outcomes, strict=True):
        if outcome is None:
            result.disconnected += 1
        elif isinstance(outcome, int):
            result.server_errors += outcome >= 500
            result.other_errors.append(str(outcome))
        elif isinstance(outcome, BaseException):
            result.other_errors.append(repr(outcome))
        elif outcome != expected[prompt]:
            result.wrong_answers += 1
        else:
            result.completed += 1
    return result


def expected_answers(base_url: str, max_tokens: int) -> dict[str, str]:
    answers = {}
    for prompt in PROMPTS:
        request = {**body(prompt, max_tokens), "stream": False}
        answers[prompt] = httpx.post(f"{base_url}/v1/chat/completions", json=request, timeout=60).json()["choices"][0][
            "message"
        ]["content"]
    return answers


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def stream_events(url: str, body: dict, started: asyncio.Event, timeout: float = 60) -> list[str]:
    """A streamed chat's `data:` payloads; `started` is set at its first."""
    events = []
    async with httpx.AsyncClient(timeout=timeout) as client, client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    return events
