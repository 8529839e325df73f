"""Faults of the machine and of what a user points tunesmith at: a disk that fills while a checkpoint is written
(exit code 3, the previous checkpoint intact), an --out that cannot be written (refused before the model
loads), and model directories that would need pickle or their own code to load (refused, saying why)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

import tunesmith.train.checkpoint as checkpoint_module
from tests.conftest import chat_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.train.checkpoint import checkpoint_problem


def _sft(tmp_path, out, *extra):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    argv = ["sft", "--model", "tiny-random-llama", "--data", str(data), "--out", str(out), "--max-steps", "4"]
    return main([*argv, "--batch-size", "4", "--save-every", "1", "--precision", "fp32", *extra])


def test_a_full_disk_while_checkpointing_exits_3_and_keeps_the_previous_checkpoint(
    tmp_path, tiny_dir, monkeypatch, capsys
):
    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def fill_the_disk_on_step_2(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # step 1 wrote its three files; the first of step 2's meets a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", fill_the_disk_on_step_2)
    assert _sft(tmp_path, tmp_path / "run") == 3
    err = capsys.readouterr().err
    assert "error: no space left on the device writing" in err and "Traceback" not in err
    assert "--resume" in err
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == ["step-00000001"] and checkpoint_problem(tmp_path / "run" / "checkpoints" / kept[0]) is None
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, tiny_dir, monkeypatch, capsys):
    import tunesmith.train.run as run_scaffold

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded for a run that cannot be written")

    monkeypatch.setattr(run_scaffold, "build_trainable_model", must_not_load)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert _sft(tmp_path, blocker / "run") == 2
    err = capsys.readouterr().err
    assert f"{blocker / 'run'}: cannot write the run there" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "damage, phrase",
    [
        ("pickle weights", "weights only as .bin (pickle"),
        ("remote code", "own code unless told: add --trust-remote-code"),
        ("no config", "no config.json"),
        ("bad config", "config.json: unreadable"),
    ],
)
def test_unsafe_or_broken_model_directories_are_refused(tmp_path, tiny_dir, capsys, damage, phrase):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = json.loads((model / "config.json").read_text())
    if damage == "pickle weights":
        for f in model.glob("*.safetensors"):
            f.rename(f.with_suffix(".bin"))
    elif damage == "remote code":
        config.update(model_type="my-own-arch", auto_map={"AutoModelForCausalLM": "modeling_mine.MyModel"})
        (model / "config.json").write_text(json.dumps(config))
    elif damage == "no config":
        (model / "config.json").unlink()
    else:
        (model / "config.json").write_text("{ not json")
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    assert main(["sft", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_fit_is_refused_with_the_plan_unless_told(tmp_path, tiny_dir, monkeypatch, capsys):
    import tunesmith.train.run as run_scaffold

    monkeypatch.setattr(run_scaffold, "free_memory", lambda device: 2**20)  # 1 MiB free
    assert _sft(tmp_path, tmp_path / "run", "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "the run needs about" in err and "weights" in err and "cpu has 0.0 GiB free" in err
    assert "--method qlora" in err and "--gradient-checkpointing" in err and "--no-memory-check" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory or the model
    assert _sft(tmp_path, tmp_path / "run", "--max-steps", "1", "--no-memory-check") == 0
