"""The bundled general-domain prompt sets and their generator scripts: the probe (measures forgetting)
and the replay set (self-synthesised rehearsal), which must not overlap."""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "src" / "tunesmith" / "forgetting" / "data"
CATEGORIES = {"facts", "reasoning", "writing", "code", "advice", "conversation"}
# set name -> (min rows, min per category)
SETS = {"probe": (320, 50), "replay": (360, 60)}
MAX_CHARS = 400
ID_RE = re.compile(r"(?P<category>[a-z]+)-(?P<index>\d{3})")


@functools.cache
def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"build_{name}_prompts", ROOT / "scripts" / f"build_{name}_prompts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _rows(name: str) -> list[dict]:
    return _read(DATA_DIR / f"{name}_prompts.jsonl")


def _normalise(prompt: str) -> str:
    return " ".join(prompt.lower().split())


@pytest.mark.parametrize("name", SETS)
def test_file_matches_script_byte_for_byte(name):
    rows = _script(name).build_rows()
    expected = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    assert (DATA_DIR / f"{name}_prompts.jsonl").read_bytes() == expected
    assert _script(name).build_rows() == rows  # deterministic


@pytest.mark.parametrize("name", SETS)
def test_row_count_and_categories(name):
    rows = _rows(name)
    min_rows, min_per_category = SETS[name]
    assert len(rows) >= min_rows
    counts = collections.Counter(row["category"] for row in rows)
    assert set(counts) == CATEGORIES
    for category, count in counts.items():
        assert count >= min_per_category, (category, count)


@pytest.mark.parametrize("name", SETS)
def test_rows_sorted_by_category_in_written_order(name):
    rows = _rows(name)
    categories = [row["category"] for row in rows]
    assert categories == sorted(categories)
    seen: dict[str, int] = collections.Counter()
    for row in rows:
        seen[row["category"]] += 1
        assert row["id"] == f"{row['category']}-{seen[row['category']]:03d}"


@pytest.mark.parametrize("name", SETS)
def test_ids_unique_and_well_formed(name):
    rows = _rows(name)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        assert set(row) == {"id", "category", "prompt"}
        match = ID_RE.fullmatch(row["id"])
        assert match, row["id"]
        assert match["category"] == row["category"]
        assert int(match["index"]) >= 1


@pytest.mark.parametrize("name", SETS)
def test_prompts_are_clean(name):
    for row in _rows(name):
        prompt = row["prompt"]
        assert isinstance(prompt, str) and prompt, row["id"]
        assert prompt == prompt.strip(), row["id"]
        assert len(prompt) <= MAX_CHARS, row["id"]
        assert "\n" not in prompt and "\r" not in prompt, row["id"]


@pytest.mark.parametrize("name", SETS)
def test_no_duplicate_prompts(name):
    normalised = [_normalise(row["prompt"]) for row in _rows(name)]
    dupes = [p for p, n in collections.Counter(normalised).items() if n > 1]
    assert dupes == []


def test_disjoint_from_probe_prompts():
    # The probe measures forgetting; replay must never train on a probe prompt.
    # Ids are per-file and may coincide, so only the prompt text is compared.
    probe = {_normalise(row["prompt"]) for row in _rows("probe")}
    shared = sorted({_normalise(row["prompt"]) for row in _rows("replay")} & probe)
    assert shared == []
