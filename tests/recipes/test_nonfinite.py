"""A NaN loss skips its step (weights and AdamW moments unchanged, `skipped_steps` counted, a warning); too
many in a row stop the run with a message naming the steps and the last good checkpoint. The NaN is
injected by a forward hook on the first decoder layer during the chosen optimizer steps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
import tunesmith.recipes.sft as sft_recipe
import tunesmith.train.run as run_scaffold
from tests.conftest import chat_rows, write_jsonl
from tunesmith.errors import Diverged
from tunesmith.models.forward import decoder_layers


@pytest.fixture
def poison(monkeypatch):
    """`poison(steps)`: the forward passes of those optimizer steps (1-based) produce NaN activations."""
    state = {"done": 0, "bad": set()}
    real_step, real_build = sft_recipe.optimizer_step, run_scaffold.build_trainable_model

    def counting_step(*args, **kwargs):
        norm = real_step(*args, **kwargs)
        state["done"] += 1
        return norm

    def nan_in_bad_steps(module, inputs, output):
        if module.training and state["done"] + 1 in state["bad"]:
            hidden = output[0] if isinstance(output, tuple) else output
            return (hidden * float("nan"), *output[1:]) if isinstance(output, tuple) else hidden * float("nan")
        return None

    def build_with_hook(*args, **kwargs):
        model, trainable, total = real_build(*args, **kwargs)
        decoder_layers(model)[0].register_forward_hook(nan_in_bad_steps)
        return model, trainable, total

    monkeypatch.setattr(sft_recipe, "optimizer_step", counting_step)
    monkeypatch.setattr(run_scaffold, "build_trainable_model", build_with_hook)
    return lambda steps: state["bad"].update(steps)


def _run(tmp_path, name, **options):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    said: list[str] = []
    defaults = dict(model="tiny-random-llama", method="lora", max_steps=5, batch_size=4, save_every=1, lr=1e-3)
    run = lambda: tunesmith.sft(data=str(data), out=str(tmp_path / name), **{**defaults, **options}, quiet=True,
                                on_event=lambda e: e["type"] == "message" and said.append(e["message"]))  # fmt: skip
    return run, said


def test_a_nan_step_is_skipped_and_counted(tmp_path, tiny_dir, poison):
    poison({3})
    run, said = _run(tmp_path, "run", keep_checkpoints=10)
    result = run()
    assert result.steps == 5 and json.loads((tmp_path / "run" / "run.json").read_text())["skipped_steps"] == 1
    (warning,) = [m for m in said if "update was skipped" in m]
    assert warning.startswith("warning: step 3: loss nan")
    rows = {r["step"]: r for r in result.metrics if "loss" in r}
    assert rows[3].get("skipped_steps") == 1 and "skipped_steps" not in rows[2]
    ckpt = tmp_path / "run" / "checkpoints"
    for f in ("trainable.safetensors", "optimizer.safetensors"):  # step 3 changed nothing
        before, after = load_file(ckpt / "step-00000002" / f), load_file(ckpt / "step-00000003" / f)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    skipped, later = (load_file(ckpt / f"step-0000000{s}" / "trainable.safetensors") for s in (3, 4))
    assert any(not torch.equal(later[k], skipped[k]) for k in later)  # training went on after it


def test_too_many_nan_steps_in_a_row_stop_the_run(tmp_path, tiny_dir, poison):
    poison({2, 3, 4, 5})
    run, said = _run(tmp_path, "run", max_bad_steps=3)
    with pytest.raises(
        Diverged, match=r"steps 2-4: 3 steps in a row .*--max-bad-steps 3.*good weights .*step-00000003"
    ):
        run()
    assert len([m for m in said if "update was skipped" in m]) == 3
    ckpt = tmp_path / "run" / "checkpoints"
    good, named = (load_file(ckpt / f"step-0000000{s}" / "trainable.safetensors") for s in (1, 3))
    assert all(torch.equal(good[k], named[k]) for k in good)  # the skipped steps 2 and 3 left step 1's weights
