"""The benchmark scripts hand their --extra flags to tunesmith (an `--compile` row that silently ran eager
would be a benchmark of nothing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _script(name: str, monkeypatch):
    # `python bench/<name>.py` puts bench/ first on sys.path, where the scripts find their shared harness.py
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["sft_vs_trl", "dpo_vs_trl"])
def test_extra_flags_reach_the_tunesmith_command(name, monkeypatch):
    argv = _script(name, monkeypatch).tunesmith_argv("MODEL", "DATA", 3, 0, "OUT", ["--compile", "--no-packing"])
    assert argv[-2:] == ["--compile", "--no-packing"]
    assert argv[argv.index("--model") + 1] == "MODEL" and argv[argv.index("--max-steps") + 1] == "3"


def test_mfu_counts_a_shared_prefix_once_for_the_rows_that_share_it(tiny_dir, monkeypatch):
    """bench/run.py: a tunesmith SFT row that computed a prefix once is not credited with its copies; TRL's
    and `--no-shared-prefix` rows are counted per example; a DPO row with the prompt once, likewise."""
    run = _script("run", monkeypatch)
    c, shape = run.model_counts(str(tiny_dir), "lora")
    sft = dict(examples=[dict(tokens=100, trained=20)] * 4, harness_step_tokens=[400], shared_prefixes=[[[60, 4]]])
    full = run.step_flops("sft-lora", sft, c, shape, {"side": "trl"})
    assert full == run.step_flops("sft-lora", sft, c, shape, {"shares_prefixes": False})
    shared = run.step_flops("sft-lora", sft, c, shape, {"shares_prefixes": True})
    assert shared[0] == pytest.approx(full[0] - 3 * run.sft_flops(c, shape, 60, 0))
    dpo = dict(examples=[dict(prompt=50, chosen=80, rejected=70)], harness_step_tokens=[150])
    both = run.step_flops("dpo-lora", dpo, c, shape, {})
    once = run.step_flops("dpo-lora", dpo, c, shape, {"shares_prompt": True})
    assert once[0] == pytest.approx(both[0] - run.sft_flops(c, shape, 49, 0) - run.reference_flops(c, shape, 49, 0))
