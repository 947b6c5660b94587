"""The project's promises about itself: README commands and CI agree."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("    pip install")][:2]


def test_ci_runs_exactly_the_readme_test_command():
    start, test = readme_commands()
    assert "monovl" in start and "pytest" in test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines
