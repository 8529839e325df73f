"""A model whose architecture is Python code in its own directory (config.json's auto_map): refused unless
--trust-remote-code, then loaded with that code, and probed before training: an attention that mixes the
sequences of a packed or pair row is refused with the setting that avoids it, so it never trains a
different function than it runs."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import yaml

from tests.conftest import chat_rows, preference_rows, write_jsonl
from tunesmith.cli import main

CONFIGURATION = """
from transformers import LlamaConfig


class MineConfig(LlamaConfig):
    model_type = "my-own-arch"
"""

# an honest architecture: Llama under another name, attention through transformers' attention functions
HONEST = """
from transformers import LlamaForCausalLM

from .configuration_mine import MineConfig


class MineForCausalLM(LlamaForCausalLM):
    config_class = MineConfig
"""

# an architecture whose attention drops the mask and the positions it is given: causal over the whole row
MIXING = """
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

from .configuration_mine import MineConfig


class WholeRowAttention(LlamaAttention):
    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        kwargs.pop("packed_rows", None)
        kwargs.pop("position_ids", None)
        return super().forward(hidden_states, position_embeddings, None, **kwargs)


class MineForCausalLM(LlamaForCausalLM):
    config_class = MineConfig

    def __init__(self, config):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = WholeRowAttention(config, i)
"""


def remote_code_model(tmp_path, tiny_dir, modeling: str):
    # transformers imports a directory's code as a module named after the directory, once per process
    model = tmp_path / ("honest_model" if modeling is HONEST else "mixing_model")
    shutil.copytree(tiny_dir, model)
    for f in model.iterdir():
        f.chmod(0o644)
    model.chmod(0o755)
    config = json.loads((model / "config.json").read_text())
    config.update(
        model_type="my-own-arch",
        architectures=["MineForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_mine.MineConfig",
            "AutoModelForCausalLM": "modeling_mine.MineForCausalLM",
        },
    )
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_mine.py").write_text(textwrap.dedent(CONFIGURATION))
    (model / "modeling_mine.py").write_text(textwrap.dedent(modeling))
    return model


def train(recipe, tmp_path, model, *extra):
    rows = chat_rows(8) if recipe == "sft" else preference_rows(8)
    data = write_jsonl(tmp_path / f"{recipe}.jsonl", rows)
    out = tmp_path / f"run-{recipe}-{len(extra)}"
    argv = [recipe, "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "2"]
    return main([*argv, "--batch-size", "4", "--precision", "fp32", "--no-memory-check", *extra]), out


def test_remote_code_is_refused_unless_trusted_then_trains_and_chats(tmp_path, tiny_dir, capsys):
    model = remote_code_model(tmp_path, tiny_dir, HONEST)
    code, out = train("sft", tmp_path, model)
    assert code == 2
    err = capsys.readouterr().err
    assert "needs Python code from the model's directory" in err and "--trust-remote-code" in err
    assert "Traceback" not in err and not out.exists()

    code, out = train("sft", tmp_path, model, "--trust-remote-code")
    assert code == 0, capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["trust_remote_code"] is True
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    generate = ["generate", "--model", str(model), "--adapter", str(out / "adapter"), "--prompt", "hi"]
    assert main([*generate, "--max-new-tokens", "3"]) == 2  # every command that loads a model asks too
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main([*generate, "--max-new-tokens", "3", "--trust-remote-code"]) == 0


@pytest.mark.parametrize(
    "recipe, extra, outcome",
    [
        ("sft", [], "rerun with --no-packing"),
        ("sft", ["--no-packing"], None),  # one sequence per row: nothing to mix
        ("dpo", [], "this recipe cannot train it"),  # the pair row and the packed row both mix
    ],
)
def test_an_attention_that_mixes_the_rows_sequences_is_refused_saying_what_avoids_it(
    tmp_path, tiny_dir, capsys, recipe, extra, outcome
):
    model = remote_code_model(tmp_path, tiny_dir, MIXING)
    code, out = train(recipe, tmp_path, model, "--trust-remote-code", *extra)
    err = capsys.readouterr().err
    if outcome is None:
        assert code == 0, err
        return
    assert code == 2 and outcome in err and "Traceback" not in err
    assert "does not keep apart the sequences" in err and "nats" in err
    assert not (out / "checkpoints").exists() and not (out / "adapter").exists()
