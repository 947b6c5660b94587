"""deploy/grafana/monovl.json against a real Prometheus scraping a running server: every query of
every panel returns data, under both metric prefixes; the names it reads are the server's."""

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.server_process import ServerProcess, free_port
from monovl.server.metrics import PREFIXES
from tests.conftest import png_bytes
from tests.hostile import data_url, image_message
from tests.test_metrics import fresh

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "monovl.json"
PROMETHEUS = shutil.which("prometheus")
SCRAPE_S = 1
RATE_WINDOW = "20s"  # Grafana's $__rate_interval: at least four scrapes

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs prometheus (apt-get install prometheus; .ci/run installs it)"
)


def queries(prefix: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, the dashboard's variables given as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("${prefix}", prefix).replace("$model_name", ".+")
            found.append((panel["title"], expr.replace("$__rate_interval", RATE_WINDOW)))
    return found


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_metric_the_dashboard_reads_is_one_the_server_exports(prefix):
    exported = fresh(prefix).render().decode()
    for title, expr in queries(prefix):
        for metric in re.findall(rf"{prefix}:[a-z0-9_]+", expr):
            family = re.sub(r"_(bucket|total|sum|count)$", "", metric)
            assert f"# TYPE {family} " in exported or f"# TYPE {metric} " in exported, (title, metric)


def prometheus(target: str, directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n"
        f"scrape_configs:\n  - job_name: monovl\n    static_configs:\n      - targets: ['{target}']\n"
    )
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("prometheus did not become ready")


def traffic(url: str, until: float) -> None:
    """Chats with and without images, streamed and not, a repeated prompt (prefix-cache hits)."""
    image = data_url(png_bytes(64, 48, seed=1))
    prompt = "Describe a harbour at dawn in many words. " * 8
    bodies = [
        {"messages": [{"role": "user", "content": prompt}], "max_tokens": 12},
        {"messages": image_message(image), "max_tokens": 6},
        {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "stream": True},
    ]
    with httpx.Client(timeout=60) as client:
        while time.time() < until:
            for body in bodies:
                client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()


@needs_prometheus
@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_panel_query_returns_data_from_a_real_prometheus(tiny_dir, tmp_path, prefix):
    server = ServerProcess(tiny_dir, "--metrics-prefix", prefix)
    scraper, api = prometheus(f"127.0.0.1:{server.port}", tmp_path)
    try:
        clients = [threading.Thread(target=traffic, args=(server.url, time.time() + 8)) for _ in range(2)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        time.sleep(2 * SCRAPE_S)  # the last requests scraped
        empty = []
        for title, expr in queries(prefix):
            answer = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=10).json()
            assert answer["status"] == "success", (title, expr, answer)
            values = [float(sample["value"][1]) for sample in answer["data"]["result"]]
            if not values or all(v != v for v in values):  # no series, or only NaN
                empty.append((title, expr))
        assert not empty, empty
    finally:
        scraper.terminate()
        scraper.wait(timeout=10)
        server.stop()
