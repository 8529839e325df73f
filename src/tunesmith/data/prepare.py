"""From a JSONL path to tokenized, length-checked training and evaluation examples."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from tunesmith.config.schema import DataConfig
from tunesmith.data.formats import load_sft_file
from tunesmith.data.templates import TokenizedExample, apply_length_policy, tokenize_conversations
from tunesmith.errors import ConfigError, DataError

FEW_EXAMPLES = 1000
MAX_EPOCHS = 3


def epochs_warning(total_steps: int, batch_size: int, num_examples: int) -> str | None:
    """A warning when the run passes over the data more than MAX_EPOCHS times (by --epochs or --max-steps)."""
    epochs = total_steps * batch_size / max(1, num_examples)
    if epochs <= MAX_EPOCHS + 1e-9:
        return None
    return (f"{epochs:.3g} epochs: more than {MAX_EPOCHS} passes over the same data raises the risk of "
            "overfitting and of forgetting general skills")


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    notes: list[str] = field(default_factory=list)  # what was truncated or dropped
    warnings: list[str] = field(default_factory=list)


def length_stats(lengths: list[int]) -> dict[str, float]:
    """min / median / p95 / max token counts (nearest-rank p95)."""
    if not lengths:
        return {"min": 0, "median": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def _load(path: str, tokenizer, cfg: DataConfig, label: str, notes: list[str]) -> list[TokenizedExample]:
    examples = tokenize_conversations(tokenizer, load_sft_file(path), cfg.train_on_prompt)
    result = apply_length_policy(examples, cfg.max_length, cfg.overlength)
    if result.truncated:
        notes.append(f"{label}: truncated {result.truncated} example(s) to {cfg.max_length} tokens")
    if result.dropped_overlength:
        notes.append(f"{label}: dropped {result.dropped_overlength} example(s) longer than {cfg.max_length} tokens")
    if result.dropped_empty:
        notes.append(f"{label}: dropped {result.dropped_empty} example(s) whose trained tokens all lay past "
                     f"{cfg.max_length} tokens")
    if not result.examples:
        raise DataError([f"{path}: no example left after the length policy (max_length {cfg.max_length})"])
    return result.examples


def prepare_sft_data(cfg: DataConfig, tokenizer, seed: int) -> PreparedData:
    notes: list[str] = []
    train = _load(cfg.train, tokenizer, cfg, "train", notes)
    evaluation: list[TokenizedExample] = []
    if cfg.eval:
        evaluation = _load(cfg.eval, tokenizer, cfg, "eval", notes)
    elif cfg.eval_split > 0:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=g).tolist()
        n_eval = max(1, round(cfg.eval_split * len(train)))
        if n_eval >= len(train):
            raise ConfigError(f"data.eval_split: {cfg.eval_split} leaves no training example out of {len(train)}")
        evaluation = [train[i] for i in sorted(order[:n_eval])]
        train = [train[i] for i in sorted(order[n_eval:])]
        notes.append(f"held out {n_eval} training example(s) for evaluation (--eval-split {cfg.eval_split})")
    warnings = []
    if len(train) < FEW_EXAMPLES:
        warnings.append(f"only {len(train)} training examples: fewer than {FEW_EXAMPLES} often under-specifies "
                        "the behaviour; watch the eval loss for overfitting")
    return PreparedData(train, evaluation, notes, warnings)
