"""Shared fixtures: an isolated TUNESMITH_HOME per test session and the tiny random model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def tunesmith_home(tmp_path_factory) -> Path:
    """Every test session builds its own model cache, so tests never touch a user's cache."""
    home = tmp_path_factory.mktemp("tunesmith_home")
    old = os.environ.get("TUNESMITH_HOME")
    os.environ["TUNESMITH_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TUNESMITH_HOME", None)
    else:
        os.environ["TUNESMITH_HOME"] = old


@pytest.fixture(scope="session")
def tiny_dir(tunesmith_home) -> Path:
    from tunesmith.models import resolve_model_dir

    return resolve_model_dir("tiny-random-llama")


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from tunesmith.models import load_tokenizer

    return load_tokenizer(tiny_dir)


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """n small, varied chat examples: some with a system turn, some multi-turn, some prompt/completion."""
    import random

    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 10)))
        if i % 4 == 0:
            rows.append({"prompt": f"Repeat: {q}", "completion": a})
        elif i % 4 == 1:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": a},
                    ]
                }
            )
        elif i % 4 == 2:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": a},
                        {"role": "user", "content": "again"},
                        {"role": "assistant", "content": q},
                    ]
                }
            )
        else:
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(24))


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """n small pairs in both accepted formats: the chosen side always answers with 'yes ...'."""
    import random

    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
        good = "yes " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        bad = "no " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        if i % 2:
            rows.append(
                {
                    "input": {"messages": [{"role": "user", "content": q}]},
                    "preferred_output": [{"role": "assistant", "content": good}],
                    "non_preferred_output": [{"role": "assistant", "content": bad}],
                }
            )
        else:
            rows.append(
                {
                    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
                    "chosen": good,
                    "rejected": bad,
                }
            )
    return rows
