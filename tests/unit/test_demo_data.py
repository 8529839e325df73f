"""Tests for the bundled demo dataset and its generator script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.demo.task import FIELDS, INTENTS, SYSTEM_PROMPT, URGENCIES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "tunesmith" / "demo" / "data"
SCRIPT = ROOT / "scripts" / "build_demo_data.py"
FILES = {"support_train.jsonl": 1000, "support_heldout.jsonl": 100}


def _rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_fields_constant():
    assert FIELDS == ("name", "order_id", "product", "intent", "urgency")
    assert len(INTENTS) == 7 and set(URGENCIES) == {"low", "normal", "high"}


@pytest.mark.parametrize("name,min_rows", sorted(FILES.items()))
def test_shipped_file_rows(name, min_rows):
    path = DATA / name
    assert path.is_file()
    rows = _rows(name)
    assert len(rows) >= min_rows
    for row in rows:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
        assert msgs[0]["content"] == SYSTEM_PROMPT
        answer = json.loads(msgs[2]["content"])
        assert isinstance(answer, dict)
        assert tuple(answer) == FIELDS
        assert msgs[2]["content"] == json.dumps(answer)
        assert answer["intent"] in INTENTS
        assert answer["urgency"] in URGENCIES
        user = msgs[1]["content"]
        for f in ("name", "order_id", "product"):
            v = answer[f]
            assert v is None or (isinstance(v, str) and v in user), (f, v, user)
        assert 15 <= len(user.split()) <= 60


@pytest.mark.parametrize("name", sorted(FILES))
def test_all_intents_present_and_no_duplicates(name):
    rows = _rows(name)
    intents = {json.loads(r["messages"][2]["content"])["intent"] for r in rows}
    assert intents == set(INTENTS)
    users = [r["messages"][1]["content"] for r in rows]
    assert len(set(users)) == len(users)


def test_heldout_disjoint_from_train():
    train = {r["messages"][1]["content"] for r in _rows("support_train.jsonl")}
    heldout = {r["messages"][1]["content"] for r in _rows("support_heldout.jsonl")}
    assert not (train & heldout)


def test_generator_reproduces_shipped_files(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
