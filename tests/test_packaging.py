"""The installed package: `monovl` is its only top-level import, with the repository's folders
mapped into it, so a user's own `server`, `model`, `engine` or `preprocessing` neither shadows it
nor is shadowed."""

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("server", "model", "engine", "preprocessing")


def test_the_wheel_installs_monovl_alone_and_the_folders_do_not_import_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside the sources
    for name in ("monovl", *FOLDERS):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("monovl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"monovl", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    for folder in FOLDERS:
        assert f"monovl/{folder}/__init__.py" in names
    environment = tmp_path / "env"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    # Specs, not imports: the subpackages' modules need the dependencies this bare environment lacks.
    check = (
        "import importlib.util as u\n"
        f"assert all(u.find_spec(name) is None for name in {FOLDERS!r}), 'a top-level folder imports'\n"
        f"assert all(u.find_spec(f'monovl.{{name}}') is not None for name in {FOLDERS!r})\n"
        "assert u.find_spec('monovl.server.cli') is not None\n"
    )
    done = subprocess.run([python, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    entry = (environment / "bin" / "monovl").read_text()
    assert "from monovl.server.cli import main" in entry
