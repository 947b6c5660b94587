"""Load and soak: many concurrent streams, 30% of clients leaving mid-stream, bounded rounds."""

import asyncio
import time

import pytest

from benchmarks.server_process import ServerProcess
from tests.load import expected_answers, resident_kib, run_round

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--max-num-seqs", "64", "--max-queue", "1000")
    yield process
    process.stop()


def settle(server, timeout=15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.metric("monovl:kv_cache_usage_perc") == 0 and server.metric("monovl:num_requests_running") == 0:
            return True
        time.sleep(0.1)
    return False


def test_rounds_of_concurrent_streams_lose_nothing_and_leak_nothing(server):
    expected = expected_answers(server.url, MAX_TOKENS)
    memory = []
    for round_number in range(3):
        result = asyncio.run(
            run_round(server.url, expected, streams=120, leave_share=0.3, max_tokens=MAX_TOKENS, seed=round_number)
        )
        assert result.server_errors == 0 and not result.other_errors, result
        assert result.wrong_answers == 0, result
        assert result.completed + result.disconnected == 120 and result.disconnected > 10
        assert settle(server), "KV blocks or running requests left after the round"
        memory.append(resident_kib(server.process.pid))
    # after the first round has warmed every pool and cache, memory stays flat
    assert max(memory[1:]) <= memory[0] * 1.05, memory
    assert server.metric("monovl:request_success_total", 'finished_reason="abort"') > 0
