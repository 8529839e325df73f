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
