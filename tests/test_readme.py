"""The README's test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The bash commands under the README's "Quick start" heading, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1]
    assert "python -m pytest -q" in test_command and "-m slow" in test_command  # quick and slow tests both
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert f"{test_command} || exit $?" in ci_lines  # set -e alone would go on after a failed && chain
