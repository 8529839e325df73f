"""Each method trains what it should and leaves the rest alone."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import chat_rows, write_jsonl
from tunesmith.config.schema import SFTConfig
from tunesmith.recipes.sft import run_sft


def _run(tmp_path, method, steps=8, lr=None, name=None):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(4))
    cfg = SFTConfig(model="tiny-random-llama", method=method, out=str(tmp_path / (name or method)))
    cfg.data.train = str(data)
    cfg.train.max_steps = steps
    cfg.train.batch_size = 4
    cfg.train.lr = lr or (1e-2 if method != "full" else 3e-3)
    cfg.train.warmup_ratio = 0.0
    cfg.train.save_every = 0
    cfg.validate()
    return run_sft(cfg, say=lambda s: None, progress=False)


def _losses(run_dir):
    from tunesmith.train.metrics import read_metrics

    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_method_learns(tmp_path, tiny_dir, method):
    before = _digest(tiny_dir)
    result = _run(tmp_path, method)
    losses = _losses(result.run_dir)
    assert len(losses) == 8
    # the same 4 examples every step: the loss must fall (a random 49K-vocabulary model starts at ~ln 49152)
    assert losses[-1] < losses[0] - (1.0 if method == "full" else 0.3), losses
    assert _digest(tiny_dir) == before  # the cached base is never written
    if method == "full":
        assert (result.output / "config.json").is_file() and (result.output / "model.safetensors").is_file()
    else:
        assert (result.output / "adapter_config.json").is_file()
        weights = load_file(result.output / "adapter_model.safetensors")
        assert weights and all("lora_" in k for k in weights)


def test_lora_leaves_base_weights_and_disabled_adapter_equals_base(tmp_path, tiny_dir):
    from tunesmith.models import load_model

    base = load_model(tiny_dir, torch.device("cpu"))
    result = _run(tmp_path, "lora")
    ids = torch.tensor([[1, 20, 300, 4000, 5, 60]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        tuned = result.model(input_ids=ids).logits
        with result.model.disable_adapter():
            disabled = result.model(input_ids=ids).logits
    assert not torch.allclose(tuned, expected, atol=1e-4)
    torch.testing.assert_close(disabled, expected, atol=1e-6, rtol=0)


def test_qlora_base_is_nf4(tmp_path, tiny_dir):
    result = _run(tmp_path, "qlora", steps=1)
    kinds = {type(m).__name__ for m in result.model.modules()}
    assert "Linear4bit" in kinds
    weight = result.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4"
    assert weight.quant_state.nested  # double quantization


def test_full_trains_every_parameter(tmp_path, tiny_dir):
    from tunesmith.models import load_model

    base = load_model(tiny_dir, torch.device("cpu"))
    result = _run(tmp_path, "full", steps=2)
    changed = [n for (n, p), q in zip(base.named_parameters(), result.model.parameters()) if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters()))


def test_peft_loads_the_adapter_and_reproduces_logits(tmp_path, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = _run(tmp_path, "lora")
    ids = torch.tensor([[1, 20, 300, 4000, 5, 60, 7]])
    with torch.no_grad():
        ours = result.model(input_ids=ids).logits
        # PEFT alone, the way any PEFT user (or vLLM/TGI) would load the adapter
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_dir)), str(result.output))
        theirs = loaded.eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_qlora_gradients_unchanged_by_an_eval_pass(tiny_dir):
    """An eval-mode forward (evaluation, DPO's reference) must not switch bitsandbytes to its CPU
    inference kernel, which has no autograd and would silently cut gradients through the base."""
    from tunesmith.config.schema import LoraConfig
    from tunesmith.train.model_setup import build_trainable_model

    cfg = SFTConfig(model="tiny-random-llama", method="qlora")
    cfg.lora = LoraConfig(r=4, alpha=8.0, target="all-linear")
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])

    def grads(eval_first: bool) -> dict[str, torch.Tensor]:
        model, _, _ = build_trainable_model(cfg, tiny_dir, torch.device("cpu"), None, lambda s: None)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a non-zero B, so gradients reach every lora_A through the base
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, after_eval = grads(False), grads(True)
    first_layer = [n for n in plain if "layers.0." in n and "lora_A" in n]
    assert first_layer and all(plain[n].abs().sum() > 0 for n in first_layer)
    for name in plain:
        assert torch.allclose(plain[name], after_eval[name], atol=1e-6), name
