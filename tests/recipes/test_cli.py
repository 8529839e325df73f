"""End to end through the `tunesmith` command: exit codes, messages, and what a run leaves on disk.

Most calls run in-process (`tunesmith.cli.main` returns the exit code); a few run `python -m tunesmith`
in a subprocess to prove a user error prints a message, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import chat_rows, write_jsonl
from tunesmith.cli import main
from tunesmith.models.registry import ALIASES

TINY = "tiny-random-llama"
SFT_FAST = ["--model", TINY, "--method", "lora", "--batch-size", "4", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(home: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNESMITH_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *map(str, argv)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def bad_rows() -> list:
    return [
        {"prompt": "p", "completion": "c"},  # 1 good
        "{not json",  # 2
        {"messages": [{"role": "user", "content": "u"}]},  # 3 no assistant
        {"prompt": "p", "completion": "c"},  # 4 good
        {"messages": [{"role": "robot", "content": "u"}, {"role": "assistant", "content": "a"}]},  # 5 unknown role
        {"prompt": "only"},  # 6 no completion
    ]


BAD_LINES = (2, 3, 5, 6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """One short LoRA run shared by the tests that inspect or reuse its output."""
    root = tmp_path_factory.mktemp("cli_run")
    data = write_jsonl(root / "train.jsonl", chat_rows(24))
    out = root / "run"
    o, e = io.StringIO(), io.StringIO()  # capsys is function-scoped: capture by hand
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = main(["sft", *SFT_FAST, "--max-steps", "3", "--data", str(data), "--out", str(out)])
    return {"code": code, "out": out, "data": data, "stdout": o.getvalue(), "stderr": e.getvalue()}


# ---- errors a user can make ---------------------------------------------------------------------


def test_bad_data_subprocess_exit_2_no_traceback(tmp_path, tunesmith_home, tiny_dir):
    data = write_jsonl(tmp_path / "bad.jsonl", bad_rows())
    out = tmp_path / "run"
    proc = run_subprocess(tunesmith_home, tmp_path, "sft", *SFT_FAST, "--max-steps", "1", "--data", data, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "error:" in proc.stderr and "nothing was trained" in proc.stderr
    for n in BAD_LINES:
        assert f"{data}:{n}: " in proc.stderr
    for n in (1, 4):
        assert f"{data}:{n}: " not in proc.stderr
    assert not out.exists()  # nothing was created for a run that never started


def test_bad_data_in_process(tmp_path, capsys, tiny_dir):
    data = write_jsonl(tmp_path / "bad.jsonl", bad_rows())
    code, out, err = run_cli(capsys, "sft", *SFT_FAST, "--max-steps", "1", "--data", data, "--out", tmp_path / "run")
    assert code == 2
    assert "Traceback" not in err
    assert [line.split(": ", 1)[0] for line in err.splitlines() if line.startswith(f"{data}:")] == [
        f"{data}:{n}" for n in BAD_LINES
    ]


def test_missing_data_file(tmp_path, capsys, tiny_dir):
    code, _, err = run_cli(capsys, "sft", *SFT_FAST, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "r")
    assert code == 2 and "no such file" in err


def test_unknown_model_lists_aliases(tmp_path, capsys, chat_file):
    code, _, err = run_cli(capsys, "sft", "--model", "no-such-model", "--data", chat_file, "--out", tmp_path / "r")
    assert code == 2
    assert "unknown model 'no-such-model'" in err
    for name in ALIASES:
        assert name in err
    code, _, err = run_cli(capsys, "models", "path", "no-such-model")
    assert code == 2 and TINY in err


def test_unknown_model_subprocess_no_traceback(tmp_path, tunesmith_home):
    proc = run_subprocess(tunesmith_home, tmp_path, "generate", "--model", "no-such-model", "--prompt", "hi")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert all(name in proc.stderr for name in ALIASES)


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["--set", "train.lrr=1e-4"], "train.lr"),
        (["--set", "lr=1e-4"], "train.lr"),
    ],
)
def test_unknown_config_key_flag(tmp_path, capsys, chat_file, argv, suggestion):
    code, _, err = run_cli(capsys, "sft", *SFT_FAST, "--data", chat_file, "--out", tmp_path / "r", *argv)
    assert code == 2
    assert "unknown config key" in err and f"did you mean '{suggestion}'" in err
    assert not (tmp_path / "r").exists()


def test_unknown_config_key_in_yaml(tmp_path, capsys, chat_file):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {TINY}\ntrain:\n  batch_siz: 4\n")
    code, _, err = run_cli(capsys, "sft", "--config", cfg, "--data", chat_file, "--out", tmp_path / "r")
    assert code == 2
    assert f"{cfg}:3:" in err and "did you mean 'train.batch_size'" in err


def test_bad_config_value(tmp_path, capsys, chat_file):
    code, _, err = run_cli(
        capsys, "sft", *SFT_FAST, "--data", chat_file, "--out", tmp_path / "r", "--micro-batch-size", "3"
    )
    assert code == 2 and "train.micro_batch_size" in err


def test_non_empty_out_is_refused_and_untouched(tmp_path, capsys, chat_file, tiny_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "config.yaml").write_text("model: mine\n")
    code, _, err = run_cli(capsys, "sft", *SFT_FAST, "--max-steps", "1", "--data", chat_file, "--out", out)
    assert code == 2
    assert "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert (out / "config.yaml").read_text() == "model: mine\n"


def test_generate_with_missing_adapter(tmp_path, capsys, tiny_dir):
    code, _, err = run_cli(
        capsys, "generate", "--model", TINY, "--adapter", tmp_path / "none", "--prompt", "hi", "--max-new-tokens", "2"
    )
    assert code == 2 and "not an adapter directory" in err


# ---- data validate -----------------------------------------------------------------------------


def test_data_validate_good(capsys, chat_file, tokenizer):
    from tunesmith.data.formats import load_sft_file
    from tunesmith.data.templates import tokenize_conversations

    lengths = [len(e.input_ids) for e in tokenize_conversations(tokenizer, load_sft_file(chat_file))]
    max_length = sorted(lengths)[len(lengths) // 2]  # about half the examples are longer
    over = sum(n > max_length for n in lengths)
    assert 0 < over < len(lengths)
    code, out, err = run_cli(capsys, "data", "validate", chat_file, "--model", TINY, "--max-length", max_length)
    assert code == 0, err
    assert f"{chat_file}: 24 valid example(s), 0 problem(s)" in out
    assert "6 system, 30 user, 30 assistant (0 with weight 0)" in out and "6 multi-turn" in out
    stats = next(line for line in out.splitlines() if "tokens per example" in line)
    assert f"min {min(lengths)}," in stats and f"max {max(lengths)};" in stats
    assert "median" in stats and "p95" in stats
    assert f"over --max-length {max_length}: {over} example(s)" in out


def test_data_validate_bad_lists_every_problem(tmp_path, capsys, tiny_dir):
    data = write_jsonl(tmp_path / "bad.jsonl", bad_rows())
    code, out, err = run_cli(capsys, "data", "validate", data, "--model", TINY)
    assert code == 2
    assert f"{data}: 2 valid example(s), 4 problem(s)" in out
    for n in BAD_LINES:
        assert f"{data}:{n}: " in out + err
    assert "Traceback" not in err


def test_data_validate_empty_file(tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    code, out, err = run_cli(capsys, "data", "validate", data, "--model", TINY)
    assert code == 2 and "empty" in out + err


# ---- models ------------------------------------------------------------------------------------


def test_models_list(capsys, tiny_dir):
    code, out, _ = run_cli(capsys, "models", "list")
    assert code == 0
    lines = out.splitlines()
    for name in ALIASES:
        assert any(line.startswith(name) for line in lines)
    assert any(line.startswith(TINY) and " cached" in line for line in lines)


def test_models_path(capsys, tiny_dir):
    code, out, _ = run_cli(capsys, "models", "path", TINY)
    assert code == 0
    path = Path(out.strip())
    assert path == tiny_dir and (path / "config.json").is_file()


# ---- a real (short) run ------------------------------------------------------------------------


def test_sft_run_writes_its_outputs(trained):
    assert trained["code"] == 0, trained["stderr"]
    out = trained["out"]
    for rel in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "run.json",
    ):
        assert (out / rel).is_file(), rel
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"step", "loss", "lr", "tokens_per_s"} <= r.keys()
        assert math.isfinite(r["loss"]) and r["lr"] > 0 and r["tokens_per_s"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 3 and run["method"] == "lora" and run["output"] == "adapter"
    assert run["train_examples"] == 24
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == TINY and saved["train"]["max_steps"] == 3 and saved["train"]["batch_size"] == 4
    assert "Traceback" not in trained["stderr"]


def test_few_examples_is_a_warning_not_an_error(trained):
    assert trained["code"] == 0
    text = trained["stdout"] + trained["stderr"]
    assert "warning:" in text and "24 training examples" in text and "1000" in text
    assert "error" not in text.lower()


def test_generate_with_the_trained_adapter(trained, capsys):
    code, out, err = run_cli(
        capsys,
        "generate",
        "--model",
        TINY,
        "--adapter",
        trained["out"] / "adapter",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "5",
    )
    assert code == 0, err
    assert out  # greedy decoding of the random model gives only newlines, stripped: one empty line
    code, out, err = run_cli(
        capsys,
        "generate",
        "--model",
        TINY,
        "--adapter",
        trained["out"] / "adapter",
        "--prompt",
        "hi",
        "--prompt",
        "and you?",
        "--max-new-tokens",
        "5",
        "--temperature",
        "1.0",
        "--seed",
        "3",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "--- prompt 1" and "--- prompt 2" in lines and all(x.strip() for x in lines)


def test_saved_config_reruns(trained, capsys, tmp_path):
    out2 = tmp_path / "rerun"
    code, out, err = run_cli(
        capsys, "sft", "--config", trained["out"] / "config.yaml", "--out", out2, "--max-steps", "1", "--no-progress"
    )
    assert code == 0, err
    assert (out2 / "adapter" / "adapter_model.safetensors").is_file()
    assert len((out2 / "metrics.jsonl").read_text().splitlines()) == 1
    first = yaml.safe_load((trained["out"] / "config.yaml").read_text())
    second = yaml.safe_load((out2 / "config.yaml").read_text())
    assert second["out"] == str(out2) and second["train"]["max_steps"] == 1
    for saved in (first, second):  # everything but the two overridden values is carried over
        del saved["out"], saved["train"]["max_steps"]
    assert first == second


def test_many_epochs_is_a_warning(tmp_path, capsys, tiny_dir):
    data = write_jsonl(tmp_path / "small.jsonl", chat_rows(4))
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "sft", *SFT_FAST, "--epochs", "4", "--data", data, "--out", out)
    assert code == 0, err
    text = stdout + err
    assert "warning:" in text and "4 epochs" in text
    assert json.loads((out / "run.json").read_text())["steps"] == 4  # 4 passes of one step each


@pytest.mark.parametrize(
    "command",
    [
        ["sft"],
        ["dpo"],
        ["reward"],
        ["score"],
        ["ppo"],
        ["grpo"],
        ["demo"],
        ["generate"],
        ["data", "validate"],
        ["models", "list"],
        ["eval"],
        ["chat"],
        ["merge"],
        ["export"],
        ["verify"],
        ["adapters", "info"],
        ["adapters", "combine"],
        ["plan"],
    ],
)
def test_every_help_page_renders(command, capsys):
    """argparse formats help with %: a stray '%' in any option's help text crashes `--help`."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tunesmith" in capsys.readouterr().out
