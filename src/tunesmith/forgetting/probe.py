"""The probe set: general-domain prompts with the base model's own greedy answers, cached per base.

The bundled probe (data/probe_prompts.jsonl, built by scripts/build_probe_prompts.py) has prompts only:
facts, reasoning, writing, code, everyday advice and conversation. Their answers come from the base model
itself, generated once and cached under $TUNESMITH_HOME/probes/, so the probe works for any base without
outside data. A user probe file has the prompt-file format (`{"prompt": ...}` or `{"messages": [...]}`
ending with a user turn) and may give an `answer` per row; rows without one are answered by the base.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.atomic import atomic_write_bytes, atomic_write_text
from tunesmith.data.formats import Conversation
from tunesmith.data.prompts import load_prompt_file
from tunesmith.data.templates import TokenizedExample, tokenize_conversations
from tunesmith.errors import DataError
from tunesmith.forgetting.measure import BaseStats
from tunesmith.generation import generate_chat
from tunesmith.models.inference import load_for_inference
from tunesmith.models.registry import tunesmith_home

BUNDLED_PROBE = Path(__file__).parent / "data" / "probe_prompts.jsonl"
ANSWER_TOKENS = 64  # greedy tokens per base answer
CACHE_VERSION = 1  # bump when the way answers are generated changes


@dataclass(frozen=True)
class ProbeItem:
    messages: list[dict]  # the prompt, ending with a user turn
    answer: str | None  # None: to be answered by the base
    where: str  # FILE:LINE


def load_probe(path: str | Path | None = None) -> list[ProbeItem]:
    """The probe's prompts (the bundled set when `path` is None); an `answer` must be a non-empty string."""
    path = Path(path) if path is not None else BUNDLED_PROBE
    rows = load_prompt_file(path)
    problems = [
        f"{r.where}: `answer` must be a non-empty string"
        for r in rows
        if "answer" in r.row and not (isinstance(r.row["answer"], str) and r.row["answer"].strip())
    ]
    if problems:
        raise DataError(problems)
    if not rows:
        raise DataError([f"{path}: the probe file has no prompts"])
    return [ProbeItem(r.messages, r.row.get("answer"), r.where) for r in rows]


def _cache_file(model_dir: Path) -> Path:
    """One cache file per (base weights, generation settings), answers keyed by their prompt."""
    weights = sorted(p for p in Path(model_dir).glob("*.safetensors"))
    ident = json.dumps(
        {
            "model": str(Path(model_dir).resolve()),
            "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights],
            "tokens": ANSWER_TOKENS,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return tunesmith_home() / "probes" / f"{Path(model_dir).name}-{key}.jsonl"


def _prompt_key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


def base_answers(items: list[ProbeItem], model_dir: Path, say=print, progress: bool = True) -> list[str]:
    """The answer to each probe item: its own, or the base's greedy answer.

    Base answers are cached per base model, keyed by prompt, so a subset of a probe, the whole probe and
    the replay prompts share one cache; only prompts never answered before are generated."""
    cache = _cache_file(model_dir)
    known: dict[str, str] = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            known[row["key"]] = row["answer"]
    keys = [_prompt_key(item.messages) for item in items]
    todo = list(dict.fromkeys(k for k, item in zip(keys, items) if item.answer is None and k not in known))
    if todo:
        by_key = {k: item.messages for k, item in zip(keys, items)}
        say(f"probe: the base model answers {len(todo)} prompts once (cached in {cache.parent})")
        model, tokenizer = load_for_inference(str(model_dir))
        answers = generate_chat(
            model,
            tokenizer,
            [by_key[k] for k in todo],
            max_new_tokens=ANSWER_TOKENS,
            batch_size=32,
            precision="fp32",
            progress="probe: the base answers" if progress else None,
        )
        known.update(zip(todo, answers))
        atomic_write_text(
            cache, "".join(json.dumps({"key": k, "answer": a}, ensure_ascii=False) + "\n" for k, a in known.items())
        )
    return [item.answer if item.answer is not None else known[k] for k, item in zip(keys, items)]


def probe_examples(tokenizer, items: list[ProbeItem], answers: list[str]) -> list[TokenizedExample]:
    """Prompt + answer per item, tokenized with the chat template; only the answer's tokens are scored.
    Items whose answer is empty (the base said nothing) are left out."""
    convs = [
        Conversation(
            [{**m, "weight": 0} for m in item.messages] + [{"role": "assistant", "content": answer, "weight": 1}],
            item.where,
        )
        for item, answer in zip(items, answers)
        if answer.strip()
    ]
    return tokenize_conversations(tokenizer, convs)


def _example_key(example: TokenizedExample) -> str:
    """The token ids and which of them are scored: all that the base's statistics depend on, given the base."""
    data = json.dumps([example.input_ids, example.labels]).encode()
    return hashlib.sha256(data).hexdigest()[:24]


def cached_base_stats(
    model_dir: Path,
    examples: list[TokenizedExample],
    precision: str,
    compute: Callable[[list[TokenizedExample]], list[BaseStats]],
) -> list[BaseStats]:
    """The base's `BaseStats` for each example, cached beside its answers per base and `precision` (the
    autocast it ran under), keyed by the example's tokens; `compute` runs the base on the ones never seen."""
    from safetensors.torch import load, save  # heavy: deferred with torch's

    cache = _cache_file(model_dir)
    cache = cache.with_name(f"{cache.stem}-stats-{precision}.safetensors")
    known: dict[str, torch.Tensor] = load(cache.read_bytes()) if cache.is_file() else {}
    keys = [_example_key(e) for e in examples]
    todo = {k: e for k, e in zip(keys, examples) if f"{k}.logp" not in known}
    if todo:
        for k, stats in zip(todo, compute(list(todo.values()))):
            known.update({f"{k}.{f}": getattr(stats, f).contiguous() for f in BaseStats.FIELDS})
        atomic_write_bytes(cache, save(known))
    return [BaseStats(*(known[f"{k}.{f}"] for f in BaseStats.FIELDS)) for k in keys]
