"""`models.forward.decoding`: autocast with the frozen linear weights as low-precision copies, each LoRA
layer's update folded into its base layer's copy. Inside, the model computes what plain autocast computes
up to rounding; outside, every module and parameter is the one it was."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.models import load_model
from tunesmith.models.forward import adapter_off, autocast, decoding

CPU = torch.device("cpu")


def _lora(tiny_dir, **extra):
    torch.manual_seed(0)
    model = load_model(tiny_dir, CPU)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, **extra)
    return get_peft_model(model, config).eval()


def _state(model):
    """Every module and parameter by name, as objects, with each parameter's values and requires_grad."""
    return (
        dict(model.named_modules()),
        {n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
    )


def _same_state(before, after) -> None:
    assert before[0].keys() == after[0].keys()
    assert all(before[0][n] is after[0][n] for n in before[0])
    assert before[1].keys() == after[1].keys()
    for name, (p, values, grad) in before[1].items():
        q = after[1][name][0]
        assert q is p and q.requires_grad == grad and q.dtype == values.dtype and torch.equal(q, values), name


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(1))


def test_lora_folded_into_bf16_copies_computes_what_autocast_does(tiny_dir, ids):
    model = _lora(tiny_dir)
    before = _state(model)
    with torch.no_grad():
        full = model(input_ids=ids).logits.float()
        with autocast(CPU, torch.bfloat16):
            plain = model(input_ids=ids).logits.float()
        with adapter_off(model):
            base = model(input_ids=ids).logits.float()
        with decoding(model, CPU, torch.bfloat16):
            linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
            assert {m.weight.dtype for m in linears} == {torch.bfloat16}  # lm_head and the folded base layers
            assert not any("lora" in n for n, _ in model.named_modules())  # every LoRA layer bypassed
            folded = model(input_ids=ids).logits.float()
    _same_state(before, _state(model))
    assert (full - base).abs().max() > 0.05  # the adapter changes the logits: folding it is tested
    rounding = (plain - full).abs().max()  # what bf16 autocast alone moves the logits by
    assert (folded - full).abs().max() < 4 * rounding
    assert (folded - base).abs().max() > 8 * rounding


def test_trainable_adapter_and_adapter_off_are_kept(tiny_dir, ids):
    """A training policy (its LoRA weights trainable) with the adapter switched off inside: the base is decoded
    (nothing folded), and afterwards the adapter is on and trainable again."""
    model = _lora(tiny_dir)
    model.train()
    before = _state(model)
    assert any(grad for _, _, grad in before[1].values())
    with torch.no_grad():
        with adapter_off(model):
            with autocast(CPU, torch.bfloat16):
                plain = model(input_ids=ids).logits.float()
            with decoding(model, CPU, torch.bfloat16):
                folded = model(input_ids=ids).logits.float()
    _same_state(before, _state(model))
    assert (folded - plain).abs().max() < 0.05


@pytest.mark.parametrize("extra", [{"use_dora": True}, {"lora_bias": True}])
def test_a_lora_variant_that_cannot_be_folded_takes_plain_autocast(tiny_dir, ids, extra):
    model = _lora(tiny_dir, **extra)
    before = _state(model)
    with torch.no_grad(), decoding(model, CPU, torch.bfloat16):
        assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert torch.is_autocast_enabled("cpu")
        model(input_ids=ids)
    _same_state(before, _state(model))


def test_without_a_dtype_nothing_changes(tiny_dir, ids):
    model = _lora(tiny_dir)
    before = _state(model)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with decoding(model, CPU, None):
            assert not torch.is_autocast_enabled("cpu")
            assert torch.equal(model(input_ids=ids).logits, expected)
    _same_state(before, _state(model))


def test_modules_come_back_when_the_body_raises(tiny_dir):
    model = _lora(tiny_dir)
    before = _state(model)
    with pytest.raises(RuntimeError, match="stop"), decoding(model, CPU, torch.bfloat16):
        raise RuntimeError("stop")
    _same_state(before, _state(model))
