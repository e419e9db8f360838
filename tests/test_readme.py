"""The README's promises that a test can keep: its two commands, and CI running the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands():
    demo, tests = _commands()
    assert "reportgen demo" in demo and "pip install" in demo
    assert "pytest" in tests and "pip install" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run may add pip's -q; otherwise the line is the README's
    assert tests in ci.replace("pip install -q ", "pip install ")


def test_sample_site_is_committed_and_small():
    site = ROOT / "sample_site"
    assert (site / "index.html").is_file() and (site / "report.json").is_file()
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size < 15 * 1024 * 1024
