"""From a JSONL path to tokenized, length-checked training and evaluation examples."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from tunesmith.config.schema import DataConfig, PreferenceDataConfig, UnpairedDataConfig
from tunesmith.data.formats import Conversation, load_sft_file
from tunesmith.data.preference import PreferencePair, load_preference_file
from tunesmith.data.templates import TokenizedExample, apply_length_policy, tokenize_conversations
from tunesmith.data.unpaired import UnpairedExample, load_unpaired_file
from tunesmith.errors import ConfigError, DataError

FEW_EXAMPLES = 1000
FEW_PAIRS = 500
MAX_EPOCHS = 3


def epochs_warning(total_steps: int, batch_size: int, num_examples: int) -> str | None:
    """A warning when the run passes over the data more than MAX_EPOCHS times (by --epochs or --max-steps)."""
    epochs = total_steps * batch_size / max(1, num_examples)
    if epochs <= MAX_EPOCHS + 1e-9:
        return None
    return (
        f"{epochs:.3g} epochs: more than {MAX_EPOCHS} passes over the same data raises the risk of "
        "overfitting and of forgetting general skills"
    )


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    notes: list[str] = field(default_factory=list)  # what was truncated or dropped
    warnings: list[str] = field(default_factory=list)
    replayed: int = 0  # general examples mixed in (--replay), at the end of `train`


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
        notes.append(
            f"{label}: dropped {result.dropped_empty} example(s) whose trained tokens all lay past "
            f"{cfg.max_length} tokens"
        )
    if not result.examples:
        raise DataError([f"{path}: no example left after the length policy (max_length {cfg.max_length})"])
    return result.examples


def hold_out(items: list, fraction: float, seed: int, notes: list[str], unit: str) -> tuple[list, list]:
    """(train, eval): a seeded random `fraction` of `items` held out, both in their original order."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=g).tolist()
    n_eval = max(1, round(fraction * len(items)))
    if n_eval >= len(items):
        raise ConfigError(f"data.eval_split: {fraction} leaves no training {unit} out of {len(items)}")
    notes.append(f"held out {n_eval} training {unit}(s) for evaluation (--eval-split {fraction})")
    return [items[i] for i in sorted(order[n_eval:])], [items[i] for i in sorted(order[:n_eval])]


def mix_replay(train: list, pool: list, ratio: float, seed: int) -> tuple[list, int]:
    """`train` plus n = round(len(train) · ratio / (1 − ratio)) examples drawn from `pool` (seeded, without
    repetition until the pool is used up), so that replayed examples are `ratio` of the result. Task
    examples keep their order and come first; the training order is shuffled per epoch anyway."""
    n = round(len(train) * ratio / (1 - ratio))
    g = torch.Generator().manual_seed(seed + 1)
    drawn: list = []
    while len(drawn) < n:
        drawn += [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()[: n - len(drawn)]]
    return train + drawn, n


def prepare_sft_data(
    cfg: DataConfig, tokenizer, seed: int, self_replay: list[TokenizedExample] | None = None
) -> PreparedData:
    """Training and eval examples; with `cfg.replay`, general examples mixed in at `cfg.replay_ratio`:
    from a file, or for `self` the base's own answers that the caller brings (`self_replay`, from
    forgetting.replay.self_replay_examples)."""
    notes: list[str] = []
    assert cfg.train is not None  # DataConfig.check() refuses a config without it
    train = _load(cfg.train, tokenizer, cfg, "train", notes)
    evaluation: list[TokenizedExample] = []
    if cfg.eval:
        evaluation = _load(cfg.eval, tokenizer, cfg, "eval", notes)
    elif cfg.eval_split > 0:
        train, evaluation = hold_out(train, cfg.eval_split, seed, notes, "example")
    warnings = []
    if len(train) < FEW_EXAMPLES:
        warnings.append(
            f"only {len(train)} training examples: fewer than {FEW_EXAMPLES} often under-specifies "
            "the behaviour; watch the eval loss for overfitting"
        )
    replayed = 0
    if cfg.replay:
        if cfg.replay == "self":
            assert self_replay is not None, "replay 'self': the caller brings the base's answers"
            pool = apply_length_policy(self_replay, cfg.max_length, cfg.overlength).examples
        else:
            pool = _load(cfg.replay, tokenizer, cfg, "replay", notes)
        task = len(train)
        train, replayed = mix_replay(train, pool, cfg.replay_ratio, seed)
        notes.append(
            f"replay: mixed {replayed} general example(s) ({cfg.replay}, from a pool of {len(pool)}) into "
            f"{task} task example(s): {replayed / len(train):.1%} of the training stream"
        )
    return PreparedData(train, evaluation, notes, warnings, replayed)


# ---- preference pairs ---------------------------------------------------------------------------


@dataclass
class TokenizedPair:
    chosen: TokenizedExample  # prompt + chosen completion; labels on the completion only
    rejected: TokenizedExample  # prompt + rejected completion
    where: str


def _conversation(prompt: list[dict], completion: list[dict], where: str) -> Conversation:
    # earlier assistant turns inside the prompt are context (weight 0); the completion is what is scored
    return Conversation([{**m, "weight": 0} for m in prompt] + [{**m, "weight": 1} for m in completion], where)


def _side(pair: PreferencePair, completion: list[dict]) -> Conversation:
    return _conversation(pair.prompt, completion, pair.where)


def tokenize_pairs(tokenizer, pairs: list[PreferencePair]) -> list[TokenizedPair]:
    """Chat-template both sides of every pair; the loss covers completion tokens only."""
    chosen = tokenize_conversations(tokenizer, [_side(p, p.chosen) for p in pairs])
    rejected = tokenize_conversations(tokenizer, [_side(p, p.rejected) for p in pairs])
    return [TokenizedPair(c, r, p.where) for p, c, r in zip(pairs, chosen, rejected)]


def apply_pair_length_policy(
    pairs: list[TokenizedPair], max_length: int, overlength: str, label: str, notes: list[str]
) -> list[TokenizedPair]:
    """The SFT length policy on both sides; a pair is kept only if both of its sides are."""
    kept, truncated, dropped_long, dropped_empty = [], 0, 0, 0
    for pair in pairs:
        sides = [apply_length_policy([ex], max_length, overlength) for ex in (pair.chosen, pair.rejected)]
        if all(side.examples for side in sides):
            kept.append(TokenizedPair(sides[0].examples[0], sides[1].examples[0], pair.where))
            truncated += any(side.truncated for side in sides)
        elif any(side.dropped_overlength for side in sides):
            dropped_long += 1
        else:
            dropped_empty += 1
    if truncated:
        notes.append(f"{label}: truncated {truncated} pair(s) to {max_length} tokens per side")
    if dropped_long:
        notes.append(f"{label}: dropped {dropped_long} pair(s) with a side longer than {max_length} tokens")
    if dropped_empty:
        notes.append(f"{label}: dropped {dropped_empty} pair(s) with a completion starting past {max_length} tokens")
    return kept


@dataclass
class PreparedPreferences:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _load_pairs(
    path: str, tokenizer, cfg: PreferenceDataConfig, label: str, notes: list[str], warnings: list[str]
) -> list[TokenizedPair]:
    parsed = load_preference_file(path)
    if parsed.identical:
        lines = ", ".join(map(str, parsed.identical_lines[:10])) + (", ..." if parsed.identical > 10 else "")
        warnings.append(
            f"{path}: dropped {parsed.identical} pair(s) whose chosen and rejected are identical (line {lines})"
        )
    pairs = apply_pair_length_policy(
        tokenize_pairs(tokenizer, parsed.pairs), cfg.max_length, cfg.overlength, label, notes
    )
    if not pairs:
        raise DataError([f"{path}: no pair left after the length policy (max_length {cfg.max_length})"])
    return pairs


def train_and_eval(load, cfg, seed: int, notes: list[str], warnings: list[str], unit: str) -> tuple[list, list]:
    """`load(path, label)` on the training file, and on the eval file or a held-out `cfg.eval_split` of it."""
    train = load(cfg.train, "train")
    if cfg.eval:
        return train, load(cfg.eval, "eval")
    if cfg.eval_split > 0:
        return hold_out(train, cfg.eval_split, seed, notes, unit)
    return train, []


def prepare_preference_data(cfg: PreferenceDataConfig, tokenizer, seed: int) -> PreparedPreferences:
    notes: list[str] = []
    warnings: list[str] = []
    train, evaluation = train_and_eval(
        lambda path, label: _load_pairs(path, tokenizer, cfg, label, notes, warnings),
        cfg,
        seed,
        notes,
        warnings,
        "pair",
    )
    if len(train) < FEW_PAIRS:
        warnings.append(
            f"only {len(train)} training pairs: fewer than {FEW_PAIRS} rarely pins down a preference; "
            "watch the eval reward accuracy"
        )
    return PreparedPreferences(train, evaluation, notes, warnings)


# ---- unpaired examples (KTO) --------------------------------------------------------------------


@dataclass
class TokenizedUnpaired:
    example: TokenizedExample  # prompt + completion; labels on the completion only
    mismatched: TokenizedExample  # the same prompt with the next example's completion: KTO's KL sample
    desirable: bool
    where: str


def _load_unpaired(
    path: str, tokenizer, cfg: UnpairedDataConfig, label: str, notes: list[str], warnings: list[str]
) -> list[TokenizedUnpaired]:
    parsed = load_unpaired_file(path)
    warnings += parsed.warnings
    rows: list[UnpairedExample] = parsed.examples
    own = tokenize_conversations(tokenizer, [_conversation(e.prompt, e.completion, e.where) for e in rows])
    # KTO's reference point: the policy's KL to the base on completions that do not answer their prompt
    # (each prompt with the next row's completion), so it cannot be raised by learning the task itself
    swapped = tokenize_conversations(
        tokenizer, [_conversation(e.prompt, rows[(i + 1) % len(rows)].completion, e.where) for i, e in enumerate(rows)]
    )
    kept, dropped = [], 0
    for example, mismatched, row in zip(own, swapped, rows, strict=True):
        sides = [apply_length_policy([x], cfg.max_length, cfg.overlength).examples for x in (example, mismatched)]
        if all(sides):
            kept.append(TokenizedUnpaired(sides[0][0], sides[1][0], row.desirable, row.where))
        else:
            dropped += 1
    if dropped:
        notes.append(f"{label}: dropped {dropped} example(s) longer than {cfg.max_length} tokens or left empty")
    if not kept:
        raise DataError([f"{path}: no example left after the length policy (max_length {cfg.max_length})"])
    return kept


@dataclass
class PreparedUnpaired:
    train: list[TokenizedUnpaired]
    eval: list[TokenizedUnpaired]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare_unpaired_data(cfg: UnpairedDataConfig, tokenizer, seed: int) -> PreparedUnpaired:
    notes: list[str] = []
    warnings: list[str] = []
    train, evaluation = train_and_eval(
        lambda path, label: _load_unpaired(path, tokenizer, cfg, label, notes, warnings),
        cfg,
        seed,
        notes,
        warnings,
        "example",
    )
    return PreparedUnpaired(train, evaluation, notes, warnings)
