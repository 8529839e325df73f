"""ORPO and SimPO through `tunesmith dpo --loss`, KTO through `tunesmith kto`: the CLI end to end on the
tiny model, each with its first-step invariant where one exists."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import preference_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.train.metrics import read_metrics

TINY = [
    "--model",
    "tiny-random-llama",
    "--max-length",
    "64",
    "--batch-size",
    "8",
    "--save-every",
    "0",
    "--warmup-ratio",
    "0",
    "--precision",
    "fp32",
    "--no-progress",
]


def _train(tmp_path, name):
    return [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r and r["step"] > 0]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference_rows(16))


@pytest.fixture(scope="module")
def unpaired_file(tmp_path_factory):
    """Each pair as two labelled rows, in both accepted formats."""
    rows = []
    for i, r in enumerate(preference_rows(12)):
        prompt = r.get("prompt") or r["input"]["messages"]
        good = r.get("chosen") or r["preferred_output"][0]["content"]
        bad = r.get("rejected") or r["non_preferred_output"][0]["content"]
        if i % 2:
            rows += [
                {"prompt": prompt, "completion": good, "label": True},
                {"prompt": prompt, "completion": bad, "label": False},
            ]
        else:
            turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            rows += [
                {"messages": turns + [{"role": "assistant", "content": good}], "label": True},
                {"messages": turns + [{"role": "assistant", "content": bad}], "label": False},
            ]
    return write_jsonl(tmp_path_factory.mktemp("unpaired") / "kto.jsonl", rows)


def test_orpo_first_loss_is_nll_plus_lambda_ln2_and_it_learns(tmp_path, pairs_file, capsys):
    """A fresh adapter: odds(y_w) and odds(y_l) differ, so check the learned margin instead of a constant;
    the loss is above λ·ln 2 (the NLL is positive), no reference pass is made, and the margin grows."""
    assert (
        main(
            [
                "dpo",
                "--data",
                str(pairs_file),
                "--out",
                str(tmp_path / "orpo"),
                "--loss",
                "orpo",
                "--beta",
                "0.5",
                "--lr",
                "1e-2",
                "--max-steps",
                "6",
                *TINY,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "reference none" in out
    records = _train(tmp_path, "orpo")
    assert len(records) == 6
    assert records[0]["loss"] > 0.5 * math.log(2)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["reward_margin"] > records[0]["reward_margin"]
    run = json.loads((tmp_path / "orpo" / "run.json").read_text())
    assert run["loss"] == "orpo" and run["reference"] == "none"


def test_simpo_learns_a_margin_beyond_gamma(tmp_path, pairs_file):
    assert (
        main(
            [
                "dpo",
                "--data",
                str(pairs_file),
                "--out",
                str(tmp_path / "simpo"),
                "--loss",
                "simpo",
                "--beta",
                "2",
                "--gamma",
                "0.5",
                "--lr",
                "1e-2",
                "--max-steps",
                "6",
                *TINY,
            ]
        )
        == 0
    )
    records = _train(tmp_path, "simpo")
    assert len(records) == 6
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["reward_margin"] > records[0]["reward_margin"]


def test_kto_first_loss_is_half_and_it_separates_good_from_bad(tmp_path, unpaired_file):
    """A fresh adapter: r = 0 and z0 = 0, so every example's loss is λ · 0.5; then desirable rewards rise
    above undesirable ones."""
    assert (
        main(
            [
                "kto",
                "--data",
                str(unpaired_file),
                "--out",
                str(tmp_path / "kto"),
                "--lr",
                "1e-2",
                "--max-steps",
                "6",
                "--eval-split",
                "0.2",
                "--eval-every",
                "3",
                *TINY,
            ]
        )
        == 0
    )
    records = _train(tmp_path, "kto")
    assert len(records) == 6
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-6) and records[0]["kl"] == 0.0
    assert records[-1]["reward_margin"] > 0 and records[-1]["loss"] < 0.5
    evals = [r for r in read_metrics(tmp_path / "kto" / "metrics.jsonl") if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[0]["eval_loss"] == pytest.approx(0.5, abs=1e-6)
    assert (tmp_path / "kto" / "adapter" / "adapter_model.safetensors").is_file()


def test_kto_bad_rows_name_file_line_and_field(tmp_path, capsys):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "hi", "completion": "yo", "label": "yes"}, {"prompt": "hi", "completion": "yo"}],
    )
    assert main(["kto", "--data", str(bad), "--out", str(tmp_path / "k"), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and f"{bad}:2:" in err and "label" in err and "Traceback" not in err
    assert not (tmp_path / "k").exists()
