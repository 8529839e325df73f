"""What every recipe does around its loop: the trainable model, the saved config, the saved result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from tunesmith.adapters.lora import apply_lora, parameter_counts
from tunesmith.atomic import atomic_directory, atomic_write_text
from tunesmith.config.load import config_to_yaml
from tunesmith.data.packing import collate_packed, collate_padded, collate_pairs
from tunesmith.data.templates import TokenizedExample
from tunesmith.errors import ModelError
from tunesmith.losses.sft import IGNORE
from tunesmith.models import load_model
from tunesmith.models.attention import packs_flat, pairs_in_positions
from tunesmith.models.forward import batch_sequence_logps, decoder_layers, eval_mode, unwrap
from tunesmith.models.load import fp32_weight_bytes, keep_4bit_differentiable, needs_remote_code, weight_bytes

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def collate_pairs_for(
    model: torch.nn.Module,
    chosen: list[TokenizedExample],
    rejected: list[TokenizedExample],
    packing: bool,
    max_length: int,
    pad_id: int,
):
    """`collate_pairs` in the row layout this model's attention takes: one flat row where it attends per
    example, else padded pair rows under a 4-D mask, which a model whose pairs need their layout in
    positions (a sliding window, soft-capped attention) cannot take: `pairs_in_positions` refuses it."""
    pairs_in_positions(model)
    return collate_pairs(chosen, rejected, packing, max_length, pad_id, packs_flat(model))


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def build_trainable_model(
    cfg, model_dir: Path, device: torch.device, amp_dtype: torch.dtype | None, say: Callable[[str], None]
) -> tuple[torch.nn.Module, int, int]:
    """The base (NF4 for qlora) with a fresh PEFT LoRA adapter, or every weight trainable for full.

    `cfg` is any recipe config with `method`, `lora` and `train`; seeds torch first, so the adapter's
    initialisation depends only on `train.seed`. Returns (model, trainable params, total params).
    """
    for warning in cfg.guard_rail_warnings():
        say(f"warning: {warning}")
    torch.manual_seed(cfg.train.seed)  # LoRA initialisation and dropout draw from this generator
    quantized = cfg.method == "qlora"
    model = load_model(model_dir, device, quantize_4bit=quantized, compute_dtype=amp_dtype or torch.float32)
    if quantized:
        keep_4bit_differentiable(model)
        say(
            f"qlora: base weights {human_bytes(weight_bytes(model))} in NF4 (double-quantized) "
            f"vs {human_bytes(fp32_weight_bytes(model))} in fp32"
        )
    if cfg.method in ("lora", "qlora"):
        model = apply_lora(model, cfg.lora)
    else:
        model.requires_grad_(True)
    if cfg.train.gradient_checkpointing:
        # non-reentrant checkpointing works with a frozen embedding (no input grads needed)
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.compile:
        compile_layers(model)
        say("compile: decoder layers compiled on first use (the first steps are slow)")
    trainable, total = parameter_counts(model)
    say(f"{cfg.method}: trainable params {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")
    return model, trainable, total


PACKED, SHARED_PREFIX, PAIR = "packed rows", "packed rows sharing a prompt", "prompt-sharing pair rows"


def row_layout_errors(model: torch.nn.Module) -> dict[str, float]:
    """Each row layout tunesmith trains with whose log-probs differ from each sequence run alone, with the
    largest difference |Δ log p(y | x)| in nats: packed rows, packed rows with a shared prompt computed
    once (models that attend per example), and one chosen/rejected pair per row with the prompt once.
    Probed on three random sequences, two sharing a 10-token prompt. transformers' own architectures are
    tested for these (tests/families/); a model with its own code is probed when it loads."""
    g = torch.Generator().manual_seed(0)
    vocab = unwrap(model).config.get_text_config().vocab_size
    prompt = torch.randint(vocab, (10,), generator=g).tolist()

    def example(prefix: list[int], n: int) -> TokenizedExample:
        reply = torch.randint(vocab, (n,), generator=g).tolist()
        return TokenizedExample(prefix + reply, [IGNORE] * len(prefix) + reply, "probe")

    examples = [example(prompt, 5), example(prompt, 4), example([], 9)]
    flat = packs_flat(model)
    layouts = {
        PACKED: (collate_packed(examples, 64, 0, flat), examples),
        PAIR: (collate_pairs_for(model, examples[:1], examples[1:2], False, 64, 0), examples[:2]),
    }
    if flat:
        layouts[SHARED_PREFIX] = (collate_packed(examples, 64, 0, flat, share_prefixes=True), examples)
    device = next(model.parameters()).device
    errors = {}
    with eval_mode(model):
        alone = torch.cat([batch_sequence_logps(model, collate_padded([e], 0).to(device), 1)[0] for e in examples])
        for name, (batch, which) in layouts.items():
            logps, _ = batch_sequence_logps(model, batch.to(device), len(which))
            diff = float((logps - alone[: len(which)]).abs().max())
            if not diff <= 1e-3 + 1e-4 * float(alone.abs().max()):  # summation order in fp32, nothing more
                errors[name] = diff
    return errors


def shares_prompts(model: torch.nn.Module, model_dir: Path) -> bool:
    """Whether completions sampled from one prompt can continue one copy of it in a row (grpo's scoring,
    `collate_groups`): models that attend per example; one with its own code (--trust-remote-code) only
    where the probe finds those rows exact, else each completion keeps a padded row of its own."""
    if not packs_flat(model):
        return False
    return not needs_remote_code(model_dir) or SHARED_PREFIX not in row_layout_errors(model)


def check_row_layouts(model: torch.nn.Module, model_dir: Path, packing: bool, pair_rows: bool) -> None:
    """Refuse a model with its own code (--trust-remote-code) whose attention would mix the sequences of a
    row the run builds (it would train a different function than it runs), saying which setting avoids it.
    `pair_rows`: the recipe puts chosen and rejected in one row unless it packs (dpo, reward)."""
    used = {PACKED, SHARED_PREFIX} if packing else ({PAIR} if pair_rows else set())
    if not used:  # one sequence per row: nothing to mix
        return
    errors = row_layout_errors(model)
    wrong = {name: diff for name, diff in errors.items() if name in used}
    if not wrong:
        return
    found = "; ".join(f"{name}: max |Δ log p| {diff:.3g} nats" for name, diff in wrong.items())
    if packing and (not pair_rows or PAIR not in errors):
        fix = "rerun with --no-packing"
    elif not packing and PACKED not in errors and SHARED_PREFIX not in errors:
        fix = "rerun with --packing"
    else:
        fix = "this recipe cannot train it"
    raise ModelError(
        f"{model_dir}: the model's own attention code does not keep apart the sequences tunesmith puts in one "
        f"row ({found}, against each sequence run alone): {fix}"
    )


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place ("regional" compilation): the layers share one code, so it
    is compiled once rather than the whole model at once, and the LM head, loss and optimizer stay eager.
    Shapes are dynamic from the start: packed rows change width every step, and the recompile for
    dynamic shapes would otherwise land in the second step. Attention over packed examples runs eagerly
    inside (models/attention.py). Fuses what eager runs as separate passes over memory: RMSNorm, rotary
    embedding, SiLU x up, and PEFT's `base + lora_B(lora_A(x)) * scale`. Returns the layers compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def write_run_config(run_dir: Path, cfg, recipe: str) -> None:
    """RUN/config.yaml: the resolved config, rerunnable (`--resume` reads it back); RUN/base_checksum.json:
    the base's weight files before training (save_trained adds their checksum after); RUN/data_checksum.json."""
    from tunesmith.models import resolve_model_dir
    from tunesmith.models.integrity import record_data, record_start

    record_start(run_dir, resolve_model_dir(cfg.model, cfg.trust_remote_code))
    record_data(run_dir, cfg.data)
    saved = dataclasses.replace(cfg, overwrite=False, resume=False)
    atomic_write_text(
        run_dir / "config.yaml",
        config_to_yaml(
            saved, f"# resolved config; rerun with: tunesmith {recipe} --config {run_dir / 'config.yaml'} --out NEW_DIR"
        ),
    )


def save_trained(
    model: torch.nn.Module,
    tokenizer,
    run_dir: Path,
    method: str,
    model_dir: Path,
    record_dir: Path | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """adapter/ (PEFT: adapter_config.json + adapter_model.safetensors) or model/ (full weights) in `run_dir`;
    first the base's checksum again (in `record_dir`, the run directory: `run_dir` unless given), which
    must equal the one taken at the start. `state_dict`: the whole weights gathered from FSDP's shards."""
    from tunesmith.errors import ModelError
    from tunesmith.models.integrity import record_end

    integrity = record_end(record_dir or run_dir, model_dir)
    if not integrity["untouched"]:
        raise ModelError(
            f"{model_dir}: the base's weight files changed during the run (checksum {integrity['start']} "
            f"-> {integrity['end']}); something else wrote to them"
        )
    if method in ("lora", "qlora"):
        target = run_dir / "adapter"
        # point the adapter at the local base so PEFT's own loaders find it without a hub
        for peft_cfg in cast("PeftModel", model).peft_config.values():
            peft_cfg.base_model_name_or_path = str(model_dir)
        with atomic_directory(target) as tmp:
            cast("PeftModel", model).save_pretrained(str(tmp))
        return target
    target = run_dir / "model"
    with atomic_directory(target) as tmp:
        cast("PreTrainedModel", model).save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return target
