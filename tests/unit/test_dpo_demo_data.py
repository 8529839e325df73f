"""Tests for the bundled DPO demo dataset (support-reply tone) and its generator script."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

import pytest

from tunesmith.data.preference import read_preference_file

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "tunesmith" / "demo" / "data"
SCRIPT = ROOT / "scripts" / "build_dpo_demo_data.py"
FILES = {"tone_train.jsonl": 600, "tone_heldout.jsonl": 120}
MAX_TOKENS = 128  # the DPO benchmark's max length (prompt + completion)
ORDER_ID = re.compile(r"ORD-\d{5}")


@functools.cache
def _script():
    spec = importlib.util.spec_from_file_location("build_dpo_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _user(row: dict) -> str:
    return row["prompt"][1]["content"]


@pytest.mark.parametrize("name,count", sorted(FILES.items()))
def test_file_parses_as_preference_pairs(name, count):
    parsed = read_preference_file(DATA / name)
    assert parsed.problems == []
    assert parsed.identical == 0
    assert len(parsed.pairs) == count
    system = _script().SYSTEM
    for pair in parsed.pairs:
        assert [m["role"] for m in pair.prompt] == ["system", "user"]
        assert pair.prompt[0]["content"] == system
        assert len(pair.chosen) == 1 and len(pair.rejected) == 1


@pytest.mark.parametrize("name", sorted(FILES))
def test_rows_are_well_formed(name):
    rows = _rows(name)
    users = [_user(r) for r in rows]
    assert len(set(users)) == len(users)  # no repeated customer message
    curt = rambling = 0
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected"}
        user, chosen, rejected = _user(row), row["chosen"], row["rejected"]
        assert isinstance(chosen, str) and isinstance(rejected, str) and chosen != rejected
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", chosen)) <= 3, chosen
        # The chosen reply references a detail of the message (order id or product); login rows name neither.
        details = ORDER_ID.findall(user) + [p for p in _script().PRODUCTS if p in user]
        if details:
            assert any(d in chosen for d in details), (user, chosen)
        assert not ORDER_ID.search(rejected), rejected  # rejected replies never take the concrete step
        n = len(rejected.split())
        if n <= 16:
            curt += 1
        elif n >= 30:
            rambling += 1
    assert curt + rambling == len(rows)
    assert 0.4 <= curt / len(rows) <= 0.6


def test_heldout_prompts_not_in_train():
    train = {_user(r) for r in _rows("tone_train.jsonl")}
    assert not any(_user(r) in train for r in _rows("tone_heldout.jsonl"))


def test_generator_reproduces_bundled_files(tmp_path):
    build = _script().build
    build(tmp_path / "a")
    build(tmp_path / "b")
    for name in FILES:
        data = (tmp_path / "a" / name).read_bytes()
        assert data == (tmp_path / "b" / name).read_bytes(), name
        assert data == (DATA / name).read_bytes(), name


def test_sequences_fit_max_length(tokenizer):
    """prompt+chosen and prompt+rejected fit the benchmark's 128 tokens with the SmolLM2 chat template (the
    tiny test model carries the same tokenizer and template)."""
    token_lengths = _script().token_lengths
    row = _rows("tone_heldout.jsonl")[0]
    direct = tokenizer.apply_chat_template(
        row["prompt"] + [{"role": "assistant", "content": row["chosen"]}], tokenize=True
    )
    direct = direct["input_ids"] if hasattr(direct, "keys") else direct
    assert token_lengths(tokenizer, [row])[0] == [len(direct)]  # batched count == apply_chat_template's
    for name in FILES:
        chosen, rejected = token_lengths(tokenizer, _rows(name))
        assert max(chosen) <= MAX_TOKENS and max(rejected) <= MAX_TOKENS, name
