"""Fair lanes: a text-only chat does not wait behind other requests' image work, and `/tokenize`
is admitted and counted like a chat."""

import asyncio
import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.server_process import ServerProcess
from monovl.preprocessing import resize
from monovl.preprocessing.cpu_priority import IMAGE_NICENESS, lower_priority
from monovl.server.preprocess_pool import PreprocessPool
from tests.hostile import _png, data_url, image_message

USER = [{"role": "user", "content": "hi"}]


@functools.cache
def large_image() -> bytes:
    """Just under the 64-megapixel limit, in a PNG that stays small: long to decode and tile."""
    gradient = np.linspace(0, 255, 8000, dtype=np.uint8)
    pixels = np.stack([np.broadcast_to(gradient, (7990, 8000))] * 3, axis=-1)
    return _png(Image.fromarray(np.ascontiguousarray(pixels)), compress_level=1)


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--max-queue", "24")
    yield process
    process.stop()


async def plain_chats_beside(server: ServerProcess, heavy: list[tuple[str, dict]]) -> tuple[list[float], list[int]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        loads = [asyncio.create_task(client.post(path, json=body)) for path, body in heavy]
        await asyncio.sleep(1.0)  # the image lane is full now
        seconds = []
        for _ in range(4):
            started = time.perf_counter()
            plain = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 4})
            assert plain.status_code == 200
            seconds.append(time.perf_counter() - started)
        statuses = [r.status_code for r in await asyncio.gather(*loads)]
    return seconds, statuses


def test_text_chats_answer_beside_large_images_through_chat_and_tokenize(server):
    url = data_url(large_image())
    heavy = [("/tokenize", {"messages": image_message(url)})] * 8
    heavy += [("/v1/chat/completions", {"messages": image_message(url), "max_tokens": 2})] * 8
    seconds, statuses = asyncio.run(plain_chats_beside(server, heavy))
    assert statuses == [200] * 16
    assert max(seconds) < 5, seconds


def test_tokenize_counts_against_the_queue(tiny_dir):
    url = data_url(large_image())
    heavy = [("/tokenize", {"messages": image_message(url)})] * 8

    async def flood(server: ServerProcess) -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            return [r.status_code for r in await asyncio.gather(*(client.post(p, json=b) for p, b in heavy))]

    server = ServerProcess(tiny_dir, "--max-queue", "3")
    try:
        statuses = asyncio.run(flood(server))
    finally:
        server.stop()
    assert statuses.count(503) >= 3 and statuses.count(200) >= 1, statuses


def test_image_work_runs_at_a_lower_priority_than_its_process():
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    pool = PreprocessPool(1, "test-image", IMAGE_NICENESS)
    try:
        assert asyncio.run(pool.run(niceness)) == min(base + IMAGE_NICENESS, 19)
    finally:
        pool.shutdown()
    assert asyncio.run(PreprocessPool(1, "test-text").run(niceness)) == base
    assert resize._BANDS.submit(niceness).result() == min(base + IMAGE_NICENESS, 19)
    # A band thread started from an image thread (as resize does) is not niced twice.
    image_pool = PreprocessPool(1, "test-image-bands", IMAGE_NICENESS)
    try:
        fresh = asyncio.run(
            image_pool.run(
                lambda: (
                    ThreadPoolExecutor(1, initializer=lower_priority, initargs=(IMAGE_NICENESS,))
                    .submit(niceness)
                    .result()
                )
            )
        )
        assert fresh == min(base + IMAGE_NICENESS, 19)
    finally:
        image_pool.shutdown()
