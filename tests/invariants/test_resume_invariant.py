"""N steps + crash + resume + N steps == 2N uninterrupted steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import tunesmith.train.run as run_scaffold
from tests.conftest import chat_rows, write_jsonl
from tunesmith.config.schema import SFTConfig
from tunesmith.recipes.sft import run_sft


def _config(data, out, resume=False):
    cfg = SFTConfig(model="tiny-random-llama", method="lora", out=str(out), resume=resume)
    cfg.data.train = str(data)
    cfg.data.max_length = 128
    cfg.lora.dropout = 0.1  # dropout draws random numbers: the RNG state must be restored too
    cfg.train.max_steps = 6
    cfg.train.batch_size = 4
    cfg.train.micro_batch_size = 2  # gradient accumulation inside each step
    cfg.train.save_every = 3
    cfg.train.lr = 1e-3
    cfg.train.seed = 7
    cfg.validate()
    return cfg


class Crash(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, tiny_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))  # 10 examples, batch 4: epochs wrap
    whole = run_sft(_config(data, tmp_path / "whole"), say=lambda s: None, progress=False)

    real_save = run_scaffold.save_checkpoint_on_main

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash()  # the process dies right after its first checkpoint

    monkeypatch.setattr(run_scaffold, "save_checkpoint_on_main", save_then_crash)
    with pytest.raises(Crash):
        run_sft(_config(data, tmp_path / "split"), say=lambda s: None, progress=False)
    monkeypatch.setattr(run_scaffold, "save_checkpoint_on_main", real_save)
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step-00000003"]
    resumed = run_sft(_config(data, tmp_path / "split", resume=True), say=lambda s: None, progress=False)
    assert resumed.steps == whole.steps == 6

    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    # the metrics of the redone steps replace those of the crashed run, one record per step
    steps = [line for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 6


def _adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no manifest"])
def test_a_damaged_latest_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, tiny_dir, damage):
    """--resume checks the newest checkpoint against its manifest (sizes and sha256, written last); a damaged
    one is skipped, with a message naming what is wrong, for the one before, and the run still ends where an
    uninterrupted one does. Only --keep-checkpoints of them stay on disk."""
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))
    whole = _config(data, tmp_path / "whole")
    run_sft(whole, say=lambda s: None, progress=False)

    cfg = _config(data, tmp_path / "split")
    cfg.train.save_every, cfg.train.keep_checkpoints = 1, 2  # the lr schedule sees all 6 steps: crash at 4
    real_save = run_scaffold.save_checkpoint_on_main

    def save_then_crash_at_4(dist, run_dir, step, *args, **kwargs):
        real_save(dist, run_dir, step, *args, **kwargs)
        if step == 4:
            raise Crash()

    run_scaffold.save_checkpoint_on_main = save_then_crash_at_4
    try:
        with pytest.raises(Crash):
            run_sft(cfg, say=lambda s: None, progress=False)
    finally:
        run_scaffold.save_checkpoint_on_main = real_save
    checkpoints = tmp_path / "split" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003", "step-00000004"]  # keep 2
    latest = checkpoints / "step-00000004"
    weights = latest / "trainable.safetensors"
    if damage == "flip a byte":
        raw = bytearray(weights.read_bytes())
        raw[-1] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        (latest / "manifest.json").unlink()

    said: list[str] = []
    resumed = run_sft(_config(data, tmp_path / "split", resume=True), say=said.append, progress=False)
    (warning,) = [s for s in said if "skipping checkpoint" in s]
    assert (
        "step-00000004" in warning
        and {
            "flip a byte": "does not match its sha256",
            "truncate": "bytes, the manifest says",
            "no manifest": "no manifest.json",
        }[damage]
        in warning
    )
    assert resumed.steps == 6
    a, b = _adapter(tmp_path / "whole"), _adapter(tmp_path / "split")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_resume_refuses_when_no_checkpoint_is_complete(tmp_path, tiny_dir):
    from tunesmith.errors import OutputError

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))
    cfg = _config(data, tmp_path / "run")
    cfg.train.max_steps = 3
    run_sft(cfg, say=lambda s: None, progress=False)
    for manifest in (tmp_path / "run" / "checkpoints").glob("*/manifest.json"):
        manifest.unlink()
    with pytest.raises(OutputError, match="no checkpoint in checkpoints/ is complete"):
        run_sft(_config(data, tmp_path / "run", resume=True), say=lambda s: None, progress=False)


def test_save_every_minutes_checkpoints_by_the_clock(tmp_path, tiny_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))
    cfg = _config(data, tmp_path / "run")
    cfg.train.save_every, cfg.train.save_every_minutes, cfg.train.keep_checkpoints = 0, 1e-9, 10
    run_sft(cfg, say=lambda s: None, progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == [f"step-{s:08d}" for s in range(1, 7)]  # every step by the clock; the last one at the end


def test_resume_refuses_changed_settings_and_data_unless_told(tmp_path, tiny_dir):
    from tunesmith.errors import ConfigError

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))
    cfg = _config(data, tmp_path / "run")
    cfg.train.max_steps = 3
    run_sft(cfg, say=lambda s: None, progress=False)

    changed = _config(data, tmp_path / "run", resume=True)
    changed.train.lr, changed.lora.r = 5e-4, 4
    changes = r"train\.lr is 0\.0005 now, 0\.001 in the run; lora\.r is 4 now, 16 in the run"
    with pytest.raises(ConfigError, match=changes):
        run_sft(changed, say=lambda s: None, progress=False)
    write_jsonl(data, chat_rows(11))  # the data file changes under the run
    with pytest.raises(ConfigError, match=r"data\.train: .*train\.jsonl has changed since the run started"):
        run_sft(_config(data, tmp_path / "run", resume=True), say=lambda s: None, progress=False)

    anyway = _config(data, tmp_path / "run", resume=True)
    anyway.resume_anyway = True
    said: list[str] = []
    assert run_sft(anyway, say=said.append, progress=False).steps == 6
    assert [s for s in said if s.startswith("warning: --resume-anyway: data.train")]
