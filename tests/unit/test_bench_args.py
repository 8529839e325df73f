"""The benchmark scripts hand their --extra flags to tunesmith (an `--compile` row that silently ran eager
would be a benchmark of nothing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["sft_vs_trl", "dpo_vs_trl"])
def test_extra_flags_reach_the_tunesmith_command(name):
    argv = _script(name).tunesmith_argv("MODEL", "DATA", 3, 0, "OUT", ["--compile", "--no-packing"])
    assert argv[-2:] == ["--compile", "--no-packing"]
    assert argv[argv.index("--model") + 1] == "MODEL" and argv[argv.index("--max-steps") + 1] == "3"
