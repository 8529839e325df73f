"""When Liger's fused kernels serve a model (models/kernels.py): only on CUDA, only where liger-kernel is recent
enough and imports, never with TUNESMITH_LIGER=0. Their numbers against tunesmith's own path need Triton, so a
GPU: bench/gpu_check.py's liger_fused_ce check. Here, the decision and the plumbing around it."""

from __future__ import annotations

import sys

import pytest
import torch

from tunesmith.losses.sft import IGNORE, target_logps
from tunesmith.models import kernels, load_model
from tunesmith.models.forward import lm_head

CUDA = torch.device("cuda")  # a device name only: nothing here runs on it


@pytest.fixture(autouse=True)
def fresh_decision(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    kernels._liger_import_error.cache_clear()
    yield
    kernels._liger_import_error.cache_clear()


def norm_classes(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}


def test_a_cpu_model_runs_on_tunesmith_kernels(tiny_dir):
    model = load_model(tiny_dir, torch.device("cpu"))
    assert not kernels.uses_liger(model) and lm_head(model).fused_logps is None
    assert "CUDA only" in kernels.kernels_description(model)
    assert norm_classes(model) == {"LlamaRMSNorm"}  # the swap would have to know this class ...
    assert norm_classes(model) <= kernels.LLAMA_NORMS  # ... and does


def test_off_where_liger_does_not_import(monkeypatch, tiny_dir):
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)  # `import` raises ImportError
    use, why = kernels.liger_status(CUDA)
    assert not use and ("not installed" in why or "does not import" in why), why
    model = load_model(tiny_dir, torch.device("cpu"))
    said = kernels.use_liger_kernels(model, CUDA)  # as if on a GPU without a working Liger
    assert not kernels.uses_liger(model) and said.startswith("Liger off"), said
    assert norm_classes(model) == {"LlamaRMSNorm"}


def test_off_by_the_environment_variable_whatever_else_holds(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "0")
    assert kernels.liger_status(CUDA) == (False, "off (TUNESMITH_LIGER=0)")
    monkeypatch.setenv(kernels.ENV, "1")
    assert "TUNESMITH_LIGER" not in kernels.liger_status(CUDA)[1]


def test_off_for_a_liger_older_than_its_per_token_gradient_fix(monkeypatch):
    monkeypatch.setattr(kernels.importlib.metadata, "version", lambda name: "0.6.4")
    use, why = kernels.liger_status(CUDA)
    assert not use and "0.6.4 is older than 0.8.5" in why, why
    assert kernels.version_tuple("0.8.5.dev3") == (0, 8, 5) >= kernels.MIN_VERSION
    assert kernels.version_tuple("0.10.0") > kernels.MIN_VERSION > kernels.version_tuple("0.8.4")


def test_a_model_on_liger_hands_its_head_to_liger(tiny_dir):
    model = load_model(tiny_dir, torch.device("cpu"))
    setattr(model, kernels.ATTR, True)  # what use_liger_kernels sets on CUDA
    assert lm_head(model).fused_logps is kernels.liger_target_logps


def test_a_fused_kernel_gets_the_trained_rows_and_the_soft_cap():
    """`target_logps(..., linear_logps=f)` returns f's log-probs for exactly the rows the built-in path computes,
    with the cap: here f is the plain full-vocabulary formula, so both paths must agree. Liger applies a soft-cap
    itself (its kernel's HAS_SOFTCAPPING), so a soft-capped head (Gemma 2) stays on Liger."""
    g = torch.Generator().manual_seed(0)
    hidden, weight, bias = (
        torch.randn(2, 5, 8, generator=g),
        torch.randn(30, 8, generator=g),
        torch.randn(30, generator=g),
    )
    targets = torch.randint(30, (2, 5), generator=g)
    targets[0, :2] = IGNORE
    seen = []

    def full_vocab(h, w, b, y, softcap):
        seen.append((h.shape[0], softcap))
        z = softcap * torch.tanh((h @ w.T + b) / softcap)
        return torch.log_softmax(z, -1).gather(1, y[:, None]).squeeze(1)

    ours, rows = target_logps(hidden, targets, weight, bias, softcap=3.0)
    theirs, their_rows = target_logps(hidden, targets, weight, bias, softcap=3.0, linear_logps=full_vocab)
    assert seen == [(8, 3.0)]
    assert torch.equal(rows, their_rows)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
