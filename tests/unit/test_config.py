"""Config: defaults < YAML (--config) < flags < --set, every key checked against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunesmith.cli import build_parser
from tunesmith.config.load import build_config
from tunesmith.config.schema import DPOConfig, SFTConfig
from tunesmith.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*/*.yaml"))
REQUIRED = ["--data", "train.jsonl", "--out", "runs/x"]


def cfg_from(*argv: str, required: bool = True) -> SFTConfig:
    args = build_parser().parse_args(["sft", *(REQUIRED if required else []), *argv])
    return build_config(SFTConfig, args)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    cfg = cfg_from()
    assert cfg.model == "smollm2-135m-instruct" and cfg.method == "lora"
    assert cfg.data.train == "train.jsonl" and cfg.out == "runs/x"
    assert cfg.data.max_length == 512 and cfg.data.overlength == "truncate" and cfg.data.packing is True
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32.0
    t = cfg.train
    assert (t.epochs, t.max_steps, t.batch_size, t.micro_batch_size) == (1, None, 8, 8)
    assert t.lr == 2e-4 and t.schedule == "cosine" and t.seed == 42
    assert cfg.overwrite is False and cfg.resume is False


def test_yaml_values(tmp_path):
    path = write(
        tmp_path,
        "model: tiny-random-llama\nmethod: full\ndata:\n  train: d.jsonl\n  max_length: 128\n"
        "  packing: false\nout: runs/y\nlora:\n  alpha: 8\ntrain:\n  lr: 3e-5\n  batch_size: 4\n"
        "  schedule: linear\n",
    )
    cfg = cfg_from("--config", str(path), required=False)
    assert cfg.model == "tiny-random-llama" and cfg.method == "full"
    assert cfg.data.train == "d.jsonl" and cfg.out == "runs/y"
    assert cfg.data.max_length == 128 and cfg.data.packing is False
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.train.lr == pytest.approx(3e-5) and cfg.train.batch_size == 4 and cfg.train.schedule == "linear"


def test_flags_override_yaml_and_set_overrides_both(tmp_path):
    path = write(tmp_path, "train:\n  lr: 3e-5\n  batch_size: 4\n  epochs: 2\ndata:\n  max_length: 128\n")
    cfg = cfg_from("--config", str(path), "--lr", "5e-5", "--batch-size", "16", "--no-packing")
    assert cfg.train.lr == pytest.approx(5e-5) and cfg.train.batch_size == 16
    assert cfg.train.epochs == 2 and cfg.data.max_length == 128  # untouched YAML values stay
    assert cfg.data.packing is False
    cfg = cfg_from("--config", str(path), "--lr", "5e-5", "--set", "train.lr=1e-4", "--set", "data.max_length=64")
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.data.max_length == 64


def test_set_alone_and_bool_and_null():
    cfg = cfg_from("--set", "train.lr=1e-4", "--set", "data.packing=false", "--set", "train.max_steps=7")
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.data.packing is False and cfg.train.max_steps == 7
    cfg = cfg_from("--max-steps", "7", "--set", "train.max_steps=null")
    assert cfg.train.max_steps is None


def test_unknown_yaml_key_names_closest_key_and_file_line(tmp_path):
    path = write(tmp_path, "model: tiny-random-llama\n# a comment\ntrain: {batch_siz: 4}\n")
    with pytest.raises(ConfigError) as info:
        cfg_from("--config", str(path))
    msg = str(info.value)
    assert f"{path}:3:" in msg and "train.batch_siz" in msg and "'train.batch_size'" in msg


def test_unknown_yaml_key_block_style_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-4\n  epoch: 2\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:3: .*did you mean 'train\.epochs'"):
        cfg_from("--config", str(path))


def test_empty_yaml_section_is_allowed(tmp_path):
    path = write(tmp_path, "train:\n  # lr: 1e-4\nmodel: tiny-random-llama\n")
    assert cfg_from("--config", str(path)).model == "tiny-random-llama"


def test_yaml_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-4\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:3: train\.epochs: expected int"):
        cfg_from("--config", str(path))


def test_yaml_not_a_mapping_and_invalid(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        cfg_from("--config", str(write(tmp_path, "- a\n- b\n")))
    with pytest.raises(ConfigError, match="invalid YAML"):
        cfg_from("--config", str(write(tmp_path, "train: [\n")))
    with pytest.raises(ConfigError, match="cannot read"):
        cfg_from("--config", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="single value"):
        cfg_from("--config", str(write(tmp_path, "lora:\n  target: [q_proj, v_proj]\n")))


@pytest.mark.parametrize(
    "item, suggestion",
    [
        ("train.lrr=1e-4", "train.lr"),
        ("lr=1e-4", "train.lr"),
        ("batch_size=4", "train.batch_size"),
        ("data.max_len=64", "data.max_length"),
    ],
)
def test_unknown_set_key_suggests(item, suggestion):
    with pytest.raises(ConfigError) as info:
        cfg_from("--set", item)
    msg = str(info.value)
    assert "unknown config key" in msg and f"did you mean '{suggestion}'" in msg


def test_set_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        cfg_from("--set", "train.lr")


@pytest.mark.parametrize(
    "argv, key",
    [
        (["--set", "train.epochs=abc"], "train.epochs"),
        (["--set", "train.max_steps=1.5"], "train.max_steps"),
        (["--epochs", "two"], "train.epochs"),
        (["--lr", "fast"], "train.lr"),
        (["--set", "data.packing=maybe"], "data.packing"),
        (["--set", "train.epochs=null"], "train.epochs"),
    ],
)
def test_wrong_type_names_the_key(argv, key):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}: (expected|may not be empty)"):
        cfg_from(*argv)


def test_choices_enforced(tmp_path):
    with pytest.raises(SystemExit) as info:  # argparse refuses a bad flag choice itself
        cfg_from("--method", "lorax")
    assert info.value.code == 2
    with pytest.raises(ConfigError, match=r"method: 'lorax' is not one of lora, qlora, full"):
        cfg_from("--set", "method=lorax")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:2: train\.schedule: 'cosin' is not one of"):
        cfg_from("--config", str(write(tmp_path, "train:\n  schedule: cosin\n")))
    assert cfg_from("--overlength", "drop").data.overlength == "drop"


@pytest.mark.parametrize("method, lr", [("full", 1e-5), ("lora", 2e-4), ("qlora", 2e-4)])
def test_default_lr_per_method(method, lr):
    assert cfg_from("--method", method).train.lr == lr
    assert cfg_from("--method", method, "--lr", "3e-3").train.lr == pytest.approx(3e-3)


def test_micro_batch_must_divide_batch():
    cfg = cfg_from("--batch-size", "8", "--micro-batch-size", "2")
    assert cfg.train.micro_batch_size == 2
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: must divide train\.batch_size \(8\)"):
        cfg_from("--batch-size", "8", "--micro-batch-size", "3")
    assert cfg_from("--batch-size", "6").train.micro_batch_size == 6


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "data.train"),
        (["--data", "d.jsonl"], "out"),
    ],
)
def test_required_values(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        cfg_from(*argv, required=False)


@pytest.mark.parametrize(
    "argv, key",
    [
        (["--lr", "0"], "train.lr"),
        (["--max-steps", "0"], "train.max_steps"),
        (["--warmup-ratio", "1"], "train.warmup_ratio"),
        (["--max-length", "4"], "data.max_length"),
        (["--overwrite", "--resume"], "overwrite, resume"),
    ],
)
def test_value_checks(argv, key):
    with pytest.raises(ConfigError, match=key):
        cfg_from(*argv)


def test_stand_ins_fill_empty_keys_for_validation_only(tmp_path):
    """`tunesmith plan` validates a run without --out or --data: the stand-ins let validate() pass, leave
    nothing behind, and never replace a value the file, a flag or --set gave; every other check still runs."""
    stand_ins = {"out": "-", "data.train": "-"}
    cfg = build_config(SFTConfig, {"train.batch_size": 4}, stand_ins=stand_ins)
    assert cfg.out is None and cfg.data.train is None and cfg.train.micro_batch_size == 4  # validate() ran
    given = write(tmp_path, "data:\n  train: mine.jsonl\n")
    assert build_config(SFTConfig, {"config": str(given)}, stand_ins=stand_ins).data.train == "mine.jsonl"
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        build_config(SFTConfig, {"train.micro_batch_size": 3}, stand_ins=stand_ins)
    with pytest.raises(ConfigError, match="out"):
        build_config(SFTConfig, {"data.train": "d.jsonl"})  # training still requires them


def test_dict_args_work_without_argparse():
    cfg = build_config(SFTConfig, {"data.train": "d.jsonl", "out": "o", "train.batch_size": 4})
    assert cfg.train.batch_size == 4


@pytest.mark.skipif(not SHIPPED, reason="no configs/*/*.yaml shipped yet")
@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_configs_load(path):
    recipe = path.parent.name  # configs/<recipe>/*.yaml
    schema = {"sft": SFTConfig, "dpo": DPOConfig}[recipe]
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# tunesmith {recipe} --config configs/{recipe}/{path.name}", first
    # the shipped file may or may not name data/out; supply them as flags so validate() runs
    cfg = build_config(schema, build_parser().parse_args([recipe, "--config", str(path), *REQUIRED]))
    assert cfg.method in ("lora", "qlora", "full") and cfg.train.lr > 0
    assert cfg.data.train == "train.jsonl" and cfg.out == "runs/x"  # flags override the file
    # data files the config names (relative to the repository root, where its first line runs it) exist
    raw = build_config(schema, {"config": str(path), "data.train": "x", "out": "y"})
    for name in ("train", "eval"):
        named = yaml.safe_load(path.read_text(encoding="utf-8")).get("data", {}).get(name)
        if named:
            assert (ROOT / named).is_file(), f"{path.name}: data.{name} {named} does not exist"
    assert raw.method == cfg.method


def test_dpo_defaults_and_checks():
    cfg = build_config(DPOConfig, {"data.train": "p.jsonl", "out": "o"})
    assert (cfg.dpo.beta, cfg.dpo.loss, cfg.dpo.sft_weight, cfg.dpo.precompute_ref) == (0.1, "dpo", 0.0, False)
    assert cfg.train.lr == 5e-5 and cfg.data.packing is False
    assert build_config(DPOConfig, {"data.train": "p", "out": "o", "method": "full"}).train.lr == 1e-6
    with pytest.raises(ConfigError, match="dpo.loss: 'kto' is not one of dpo, ipo"):
        build_config(DPOConfig, {"data.train": "p", "out": "o", "set": ["dpo.loss=kto"]})
    with pytest.raises(ConfigError, match="unknown config key 'beta' \\(did you mean 'dpo.beta'"):
        build_config(DPOConfig, {"data.train": "p", "out": "o", "set": ["beta=0.2"]})
    with pytest.raises(ConfigError, match="unknown config key 'data.train_on_prompt'"):
        build_config(DPOConfig, {"data.train": "p", "out": "o", "set": ["data.train_on_prompt=true"]})
