"""The README's "Ask it" examples, run as written (the curl commands in bash, the Python ones in one
interpreter with the `openai` SDK) against a server of the demo checkpoint: each finishes, in time,
with an answer."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.server_process import ServerProcess
from tests.conftest import png_bytes

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_TIMEOUT_S = 180


def examples() -> tuple[list[str], list[str]]:
    """The indented code blocks of the "Ask it" section: (shell blocks, Python blocks), in order."""
    section = README.read_text().split("## Ask it", 1)[1].split("\n## ", 1)[0]
    blocks = [block for block in re.findall(r"(?:^    .*\n|^\n)+", section, re.MULTILINE) if block.strip()]
    blocks = ["\n".join(line[4:] for line in block.splitlines()) for block in blocks]
    shell = [b for b in blocks if b.lstrip().startswith(("MODEL=", "IMG=", "curl"))]
    python = [b for b in blocks if "client" in b and b not in shell]
    return shell, python


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    server = ServerProcess(None, env={"MONOVL_CACHE": str(cache), "MONOVL_MODEL": ""}, startup_s=180)
    yield server
    server.stop()


def run(command: list[str], server: ServerProcess, directory: Path) -> str:
    (directory / "photo.png").write_bytes(png_bytes(320, 240, seed=3))
    done = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_readme_has_the_examples_it_promises():
    shell, python = examples()
    assert len(shell) == 2 and len(python) == 4  # curl text, curl image; SDK stream, structured, tools, Responses


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_curl_examples_finish_on_the_demo(demo, tmp_path):
    shell, _ = examples()
    script = "set -eo pipefail\n" + "\n".join(shell).replace("localhost:8000", f"127.0.0.1:{demo.port}")
    out = run(["bash", "-c", script], demo, tmp_path)
    assert '"finish_reason"' in out and "data: [DONE]" in out


def test_the_python_examples_finish_on_the_demo(demo, tmp_path):
    _, python = examples()
    script = "\n".join(python).replace("localhost:8000", f"127.0.0.1:{demo.port}")
    out = run([sys.executable, "-c", script], demo, tmp_path)
    assert out.strip()
