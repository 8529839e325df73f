"""Every case of the bad-input corpus (cases.py) through the `tunesmith` command, in-process.

Each case runs in a fresh directory, which is also the working directory, and must: exit with its code
(2: a user error), print each of its phrases (which name the file, the line and the field), print no
traceback, create or change nothing outside its --out, and leave what was in --out before. A command
that raises instead of returning is a bug: the test fails with the traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from tests.bad_inputs.cases import CASES, Case
from tests.conftest import chat_rows, preference_rows
from tunesmith.cli import main

PLACEHOLDER = re.compile(r"\{(tmp|out|tiny|adapter|other_adapter|good_\w+|bad:[^{}]+)\}")
GOOD_FILES = {
    "good_chat": chat_rows(4),
    "good_pref": preference_rows(4),
    "good_kto": [
        {"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": "2+2?", "completion": "5", "label": False},
    ],
    "good_prompts": [{"prompt": "2+2?", "reference": "4"}, {"prompt": "3+3?", "reference": "6"}],
}
COMMANDS = ("sft", "dpo", "kto", "reward", "ppo", "grpo", "eval", "generate", "merge", "export", "adapters", "plan")


@pytest.fixture(scope="session")
def corpus_models(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """A LoRA adapter (r 4 on q_proj, v_proj) over the tiny model, and one over a model of another width."""
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.models import load_model

    root = tmp_path_factory.mktemp("corpus_models")
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    tiny = load_model(tiny_dir, torch.device("cpu"))
    peft.get_peft_model(tiny, peft.LoraConfig(**lora)).save_pretrained(str(root / "adapter"))
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    other = LlamaForCausalLM(LlamaConfig(vocab_size=128, num_hidden_layers=2, **shape))
    peft.get_peft_model(other, peft.LoraConfig(**lora)).save_pretrained(str(root / "other_adapter"))
    return {"tiny": tiny_dir, "adapter": root / "adapter", "other_adapter": root / "other_adapter"}


def expand(text: str, names: dict[str, Path]) -> str:
    """Replace the placeholders; any other brace (JSON, regexes) is left as it is."""

    def value(m: re.Match) -> str:
        name = m.group(1)
        return str(names["tmp"] / name.removeprefix("bad:") if name.startswith("bad:") else names[name])

    return PLACEHOLDER.sub(value, text)


def write_spec(path: Path, spec: Any, names: dict[str, Path]) -> None:
    """Build a file or directory from its spec (see cases.py)."""
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    elif isinstance(spec, str):
        path.write_text(expand(spec, names), encoding="utf-8")
    elif "jsonl" in spec:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in spec["jsonl"]))
    elif "repeat" in spec:
        unit, n = spec["repeat"]
        parts = [spec.get("before", ""), unit * n, spec.get("after", "")]
        path.write_bytes(b"".join(p if isinstance(p, bytes) else p.encode() for p in parts))
    elif "dir" in spec:
        path.mkdir()
        for name, inner in spec["dir"].items():
            write_spec(path / name, inner, names)
    elif "copy" in spec:
        shutil.copytree(expand(spec["copy"], names), path)
        for p in [path, *path.rglob("*")]:  # a cached base is read-only: the copy is the case's to change
            p.chmod(0o755 if p.is_dir() else 0o644)
        for name, inner in spec.get("set", {}).items():
            write_spec(path / name, inner, names)
        for name, size in spec.get("truncate", {}).items():
            with open(path / name, "r+b") as f:
                f.truncate(size)
        for name in spec.get("remove", []):
            (path / name).unlink()
    elif "text" in spec:
        path.write_text(spec["text"], encoding="utf-8")
        path.chmod(spec["mode"])
    else:
        raise ValueError(f"unknown file spec {spec!r}")


def snapshot(root: Path, skip: Path | None = None, contents: bool = True) -> dict[str, tuple]:
    """Every file and directory under `root` (but `skip`): kind, size, mtime and (with `contents`) sha256."""
    found: dict[str, tuple] = {}
    if root.is_file():
        return {".": ("file", root.stat().st_size, hashlib.sha256(root.read_bytes()).hexdigest())}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        st = path.lstat()
        if path.is_dir():
            found[str(path.relative_to(root))] = ("dir",)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if contents and os.access(path, os.R_OK) else ""
            found[str(path.relative_to(root))] = ("file", st.st_size, st.st_mtime_ns, digest)
    return found


def _params() -> list:
    marks = {c.name: [pytest.mark.xfail(reason=c.known_bug, strict=True)] if c.known_bug else [] for c in CASES}
    return [pytest.param(c, id=c.name, marks=marks[c.name]) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path: Path, corpus_models, capsys, monkeypatch) -> None:
    if case.skip_as_root and os.geteuid() == 0:
        pytest.skip(case.skip_as_root)
    names = {"tmp": tmp_path, "out": tmp_path / "out", **corpus_models}
    for key, rows in GOOD_FILES.items():
        names[key] = tmp_path / f"{key}.jsonl"
        names[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, spec in case.files.items():
        write_spec(tmp_path / name, spec, names)
    if case.out is not None:
        write_spec(names["out"], case.out, names)
    argv = [expand(word, names) for word in shlex.split(case.argv)]

    monkeypatch.chdir(tmp_path)  # a stray relative write lands here, where the snapshot sees it
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a user reward module leaves no __pycache__
    monkeypatch.setattr(sys, "path", list(sys.path))  # a user reward module's directory is added to it
    before = snapshot(tmp_path, skip=names["out"])
    out_before = snapshot(names["out"]) if case.out is not None else {}
    read_only = {k: snapshot(corpus_models[k], contents=False) for k in corpus_models}
    modules = set(sys.modules)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses a flag: usage and the error on stderr, exit code 2
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # what a user would see as a traceback and exit code 1
        pytest.fail(f"{case.name}: raised instead of a clear error:\n{traceback.format_exc()}")
    finally:
        for name in set(sys.modules) - modules:  # a reward module imported from this case's directory
            if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
                del sys.modules[name]
    captured = capsys.readouterr()
    output = captured.out + captured.err

    assert "Traceback (most recent call last)" not in output, output
    assert code == case.code, f"exit code {code}, expected {case.code}:\n{output[-3000:]}"
    for phrase in case.phrases:
        assert expand(phrase, names) in output, f"missing {expand(phrase, names)!r} in:\n{output[-3000:]}"
    if case.max_output is not None:
        assert len(output) < case.max_output, f"{len(output):,} characters of output"
    after = snapshot(tmp_path, skip=names["out"])
    assert after == before, f"changed outside --out: {sorted(set(after.items()) ^ set(before.items()))}"
    out_after = snapshot(names["out"]) if names["out"].exists() else {}
    lost = {k: v for k, v in out_before.items() if v[0] == "file" and out_after.get(k, ("gone",))[-1] != v[-1]}
    assert not lost, f"--out lost what it held: {sorted(lost)}"
    assert {k: snapshot(corpus_models[k], contents=False) for k in corpus_models} == read_only


def test_corpus_is_well_formed() -> None:
    """At least 60 cases with unique names, every command among them, and every {bad:NAME} written by its case."""
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    assert set(COMMANDS) <= {c.command.split()[0] for c in CASES}
    assert "data validate" in {c.command for c in CASES}
    for case in CASES:
        for text in (case.argv, *case.phrases):
            for name in re.findall(r"\{bad:([^{}]+)\}", text):
                assert name in case.files, f"{case.name}: {{bad:{name}}} is not among its files"
