"""The bad-input corpus: each case is a command line, the files it is given, and what the user must be told.

`test_corpus.py` runs every case through `tunesmith.cli.main` in a fresh directory (also the working
directory) and checks the exit code, that every `expect` phrase is in the output, that no traceback is,
that nothing outside `--out` was created or changed, and that what was in `--out` before is still there.
`table.py` prints the README's table of it.

Placeholders, in `argv`, `expect` and text files:
  {tmp}            the case's own directory          {out}   {tmp}/out, the case's --out
  {tiny}           the tiny random model's directory (tiny-random-llama)
  {adapter}        a valid LoRA adapter (r 4, q_proj/v_proj) over {tiny}
  {other_adapter}  a LoRA adapter of another base (a hidden size of 32, not 64)
  {good_chat} {good_pref} {good_kto} {good_prompts}
                   valid sft, preference, unpaired (kto) and prompt files in {tmp}
  {bad:NAME}       {tmp}/NAME, a file or directory the case writes (`files`)

File specs (`files` and `out`), by type:
  str                    text (placeholders expanded), UTF-8
  bytes                  these bytes
  {"jsonl": [rows]}      one JSON object per line (a str row is written as it is)
  {"repeat": [unit, n], "before": .., "after": ..}   before + unit * n + after (str or bytes)
  {"dir": {name: spec}}  a directory
  {"copy": DIR, "set": {name: spec}, "truncate": {name: bytes}, "remove": [names]}
                         a writable copy of DIR (a placeholder), then those changes
  {"text": str, "mode": 0o000}                        text with these permission bits
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# a few reusable rows and files
CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR_ROW = {"prompt": "hi", "chosen": "hello there", "rejected": "go away"}
NESTED_100K = {"repeat": ["[", 100_000], "after": "]" * 100_000 + "\n"}
REWARD_MODEL_JSON = '{"base": "{tiny}", "method": "lora", "hidden_size": 64}'
RANK_8_CONFIG = (  # the adapter's own config but r 8: its weights are rank 4
    '{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], '
    '"base_model_name_or_path": "{tiny}"}'
)
UNKNOWN_TARGET_CONFIG = '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["nope_proj"]}'


@dataclass(frozen=True)
class Case:
    name: str
    input: str  # the input kind and what is wrong with it, for the README table
    argv: str  # split like a shell line (shlex), then placeholders expanded per argument
    expect: str | tuple[str, ...]  # phrase(s) the output must contain; the first is the table's
    files: dict[str, Any] = field(default_factory=dict)
    code: int = 2
    out: Any = None  # what {out} holds before the command (a file spec); it must survive
    max_output: int | None = None  # the output must stay shorter than this (a huge field is not echoed)
    skip_as_root: str | None = None  # why the case cannot be built when the tests run as root
    known_bug: str | None = None  # a bug left for later: the case is expected to fail (strict xfail)

    @property
    def command(self) -> str:
        words = self.argv.split()
        return " ".join(words[:2] if words[0] in ("data", "adapters") else words[:1])

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.expect,) if isinstance(self.expect, str) else self.expect


SFT = "sft --model {tiny} --out {out} --no-progress"
DPO = "dpo --model {tiny} --out {out} --no-progress"
KTO = "kto --model {tiny} --out {out} --no-progress"
REWARD = "reward --model {tiny} --out {out} --no-progress"
GRPO = "grpo --model {tiny} --out {out} --no-progress"
PPO = "ppo --model {tiny} --out {out} --no-progress"
VALIDATE = "data validate --model {tiny}"

CASES: list[Case] = [
    # ---- data rows ------------------------------------------------------------------------------------------
    Case(
        "sft-messages-not-a-list",
        "data row: `messages` is a string",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:2: `messages` must be a non-empty list",
        {"train.jsonl": {"jsonl": [CHAT_ROW, {"messages": "hello"}]}},
    ),
    Case(
        "sft-missing-content",
        "data row: a message without `content`",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: messages[1]: missing `content`",
        {"train.jsonl": {"jsonl": [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}]}},
    ),
    Case(
        "sft-empty-completion",
        "data row: an empty `completion`",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: `completion`: empty",
        {"train.jsonl": {"jsonl": [{"prompt": "q", "completion": "   "}]}},
    ),
    Case(
        "sft-unknown-role",
        "data row: role `bot`",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: messages[1].role: unknown role 'bot'",
        {"train.jsonl": {"jsonl": [{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}]}},
    ),
    Case(
        "sft-content-not-string",
        "data row: `content` is a number",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: messages[0].content: must be a string, got int",
        {
            "train.jsonl": {
                "jsonl": [{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}]
            }
        },
    ),
    Case(
        "sft-weight-out-of-range",
        "data row: `weight` 2",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: messages[1].weight: must be 0 or 1, got 2",
        {
            "train.jsonl": {
                "jsonl": [
                    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}
                ]
            }
        },
    ),
    Case(
        "sft-invalid-utf8",
        "data row: invalid UTF-8",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:2: invalid UTF-8 at byte 15",
        {"train.jsonl": b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n'},
    ),
    Case(
        "sft-nul-bytes",
        "data row: NUL bytes",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: bad JSON: a NUL byte at byte 12",
        {"train.jsonl": b'{"prompt": "\x00\x00", "completion": "b"}\n'},
    ),
    Case(
        "sft-nested-100k-arrays",
        "data row: 100k nested arrays",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: bad JSON: arrays or objects nested too deeply",
        {"train.jsonl": NESTED_100K},
    ),
    Case(
        "sft-empty-file",
        "data file: empty",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}: empty file: no examples",
        {"train.jsonl": ""},
    ),
    Case(
        "sft-blank-lines-only",
        "data file: only blank lines",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}: empty file: no examples",
        {"train.jsonl": "\n   \n\t\r\n\n"},
    ),
    Case(
        "sft-10mb-line",
        "data row: a 10 MB line, cut off",
        SFT + " --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: bad JSON: Unterminated string",
        {"train.jsonl": {"repeat": ["x", 10_000_000], "before": '{"prompt": "', "after": "\n"}},
        max_output=5_000,
    ),
    Case(
        "sft-eval-data-bad-row",
        "data row: --eval-data row without an assistant turn",
        SFT + " --data {good_chat} --eval-data {bad:eval.jsonl}",
        "{bad:eval.jsonl}:1: no assistant turn",
        {"eval.jsonl": {"jsonl": [{"messages": [{"role": "user", "content": "q"}]}]}},
    ),
    Case(
        "validate-10mb-role",
        "data row: a 10 MB role, not echoed whole",
        VALIDATE + " {bad:train.jsonl}",
        ("{bad:train.jsonl}:1: messages[0].role: unknown role 'xxxx", "(10,000,002 characters)"),
        {"train.jsonl": {"repeat": ["x", 10_000_000], "before": '{"messages": [{"role": "', "after": '"}]}\n'}},
        max_output=5_000,
    ),
    Case(
        "validate-bom-then-bad-row",
        "data file: UTF-8 BOM (accepted), a bad row after it",
        VALIDATE + " {bad:train.jsonl}",
        ("{bad:train.jsonl}:2: missing `completion`", "1 valid example(s), 1 problem(s)"),
        {"train.jsonl": b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n'},
    ),
    Case(
        "validate-crlf-then-bad-row",
        "data file: CRLF line endings (accepted), a bad row",
        VALIDATE + " {bad:train.jsonl}",
        ("{bad:train.jsonl}:3: each line must be a JSON object, got list", "2 valid example(s), 1 problem(s)"),
        {"train.jsonl": b'{"prompt": "a", "completion": "b"}\r\n{"prompt": "c", "completion": "d"}\r\n[1, 2]\r\n'},
    ),
    Case(
        "validate-preference-nested",
        "data row: nested arrays in a preference file",
        VALIDATE + " --kind preference {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:2: bad JSON: arrays or objects nested too deeply",
        {"pairs.jsonl": {"repeat": ["[", 100_000], "before": "\n", "after": "]" * 100_000 + "\n"}},
    ),
    Case(
        "validate-preference-mixed-formats",
        "data row: keys of two preference formats",
        VALIDATE + " --kind preference {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:1: mixes keys of two formats",
        {"pairs.jsonl": {"jsonl": [{**PAIR_ROW, "input": {"messages": []}}]}},
    ),
    Case(
        "dpo-rejected-empty",
        "data row: an empty `rejected`",
        DPO + " --data {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:1: `rejected`: empty",
        {"pairs.jsonl": {"jsonl": [{**PAIR_ROW, "rejected": ""}]}},
    ),
    Case(
        "dpo-chosen-user-role",
        "data row: a `chosen` message from the user",
        DPO + " --data {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:1: `chosen[0].role`: must be 'assistant', got 'user'",
        {"pairs.jsonl": {"jsonl": [{**PAIR_ROW, "chosen": [{"role": "user", "content": "x"}]}]}},
    ),
    Case(
        "dpo-sft-rows",
        "data row: chat rows given to dpo",
        DPO + " --data {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:1: not a preference row",
        {"pairs.jsonl": {"jsonl": [CHAT_ROW]}},
    ),
    Case(
        "kto-label-string",
        'data row: `label` "yes"',
        KTO + " --data {bad:kto.jsonl}",
        '{bad:kto.jsonl}:2: `label`: must be true or false, got "yes"',
        {
            "kto.jsonl": {
                "jsonl": [
                    {"prompt": "q", "completion": "a", "label": True},
                    {"prompt": "q", "completion": "b", "label": "yes"},
                ]
            }
        },
    ),
    Case(
        "kto-missing-label",
        "data row: no `label`",
        KTO + " --data {bad:kto.jsonl}",
        "{bad:kto.jsonl}:1: missing `label`",
        {"kto.jsonl": {"jsonl": [{"prompt": "q", "completion": "a"}]}},
    ),
    Case(
        "reward-row-not-object",
        "data row: a JSON array",
        REWARD + " --data {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:2: each line must be a JSON object, got list",
        {"pairs.jsonl": {"jsonl": [PAIR_ROW, "[1, 2, 3]"]}},
    ),
    Case(
        "reward-prompt-ends-with-assistant",
        "data row: a prompt ending with an assistant turn",
        REWARD + " --data {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:1: `prompt`: must end with a user turn, the last is 'assistant'",
        {"pairs.jsonl": {"jsonl": [{**PAIR_ROW, "prompt": [{"role": "assistant", "content": "hi"}]}]}},
    ),
    Case(
        "grpo-prompt-not-string",
        "prompts file: `prompt` is a number",
        GRPO + " --reward json_valid --prompts {bad:prompts.jsonl}",
        "{bad:prompts.jsonl}:1: `prompt`: must be a string or a list of messages, got int",
        {"prompts.jsonl": {"jsonl": [{"prompt": 5}]}},
    ),
    Case(
        "grpo-prompts-blank-lines",
        "prompts file: only blank lines",
        GRPO + " --reward json_valid --prompts {bad:prompts.jsonl}",
        "{bad:prompts.jsonl}: empty file: no examples",
        {"prompts.jsonl": "\n\n\n"},
    ),
    Case(
        "grpo-exact-match-without-reference",
        "prompts file: no `reference` for exact_match",
        GRPO + " --reward exact_match --prompts {bad:prompts.jsonl}",
        "{bad:prompts.jsonl}:1: missing `reference` (needed by reward 'exact_match')",
        {"prompts.jsonl": {"jsonl": [{"prompt": "2+2?"}]}},
    ),
    Case(
        "ppo-prompts-invalid-utf8",
        "prompts file: invalid UTF-8",
        PPO + " --reward-model {tmp}/rm --prompts {bad:prompts.jsonl}",
        "{bad:prompts.jsonl}:1: invalid UTF-8 at byte 12",
        {"prompts.jsonl": b'{"prompt": "\xff\xfe"}\n'},
    ),
    Case(
        "eval-data-bad-role",
        "data row: --data with role `human`",
        "eval --model {tiny} --data {bad:task.jsonl}",
        "{bad:task.jsonl}:1: messages[0].role: unknown role 'human'",
        {
            "task.jsonl": {
                "jsonl": [{"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}]
            }
        },
    ),
    Case(
        "eval-probe-empty-answer",
        "prompts file: a probe row with an empty `answer`",
        "eval --model {tiny} --probe {bad:probe.jsonl}",
        "{bad:probe.jsonl}:2: `answer` must be a non-empty string",
        {"probe.jsonl": {"jsonl": [{"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": ""}]}},
    ),
    Case(
        "plan-data-nested",
        "data row: nested arrays in the --data plan counts",
        "plan --model {tiny} --data {bad:train.jsonl}",
        "{bad:train.jsonl}:1: bad JSON: arrays or objects nested too deeply",
        {"train.jsonl": NESTED_100K},
    ),
    # ---- YAML configs ---------------------------------------------------------------------------------------
    Case(
        "sft-yaml-syntax-error",
        "YAML: an unclosed [",
        SFT + " --data {good_chat} --config {bad:run.yaml}",
        "{bad:run.yaml}:3: invalid YAML: expected ',' or ']'",
        {"run.yaml": "train:\n  lr: [1\n"},
    ),
    Case(
        "sft-yaml-unknown-key",
        "YAML: `train.lrate`",
        SFT + " --data {good_chat} --config {bad:run.yaml}",
        "{bad:run.yaml}:3: unknown config key 'train.lrate' (did you mean 'train.lr'?)",
        {"run.yaml": "train:\n  epochs: 1\n  lrate: 0.001\n"},
    ),
    Case(
        "kto-yaml-unknown-key",
        "YAML: `bta` at the top",
        KTO + " --data {good_kto} --config {bad:run.yaml}",
        "{bad:run.yaml}:1: unknown config key 'bta' (did you mean 'kto.beta'?)",
        {"run.yaml": "bta: 0.1\n"},
    ),
    Case(
        "dpo-yaml-wrong-type",
        "YAML: `dpo.beta: strong`",
        DPO + " --data {good_pref} --config {bad:run.yaml}",
        "{bad:run.yaml}:2: dpo.beta: expected float, got 'strong'",
        {"run.yaml": "dpo:\n  beta: strong\n"},
    ),
    Case(
        "grpo-yaml-list-for-section",
        "YAML: a list where the `grpo` mapping belongs",
        GRPO + " --prompts {good_prompts} --config {bad:run.yaml}",
        "{bad:run.yaml}:2: grpo: a section: expected a mapping of its keys",
        {"run.yaml": "grpo:\n  - json_valid\n  - exact_match\n"},
    ),
    Case(
        "sft-yaml-list-for-value",
        "YAML: a list where `train.lr` belongs",
        SFT + " --data {good_chat} --config {bad:run.yaml}",
        "{bad:run.yaml}:2: train.lr: expected a single value",
        {"run.yaml": "train:\n  lr: [0.1, 0.2]\n"},
    ),
    Case(
        "sft-yaml-top-level-list",
        "YAML: a list, not a mapping",
        SFT + " --data {good_chat} --config {bad:run.yaml}",
        "{bad:run.yaml}:1: a config file must be a mapping",
        {"run.yaml": "- lr: 1\n- epochs: 2\n"},
    ),
    Case(
        "reward-yaml-out-of-range",
        "YAML: `train.lr: -1`",
        REWARD + " --data {good_pref} --config {bad:run.yaml}",
        "{bad:run.yaml}:3: train.lr: must be > 0",
        {"run.yaml": "train:\n  epochs: 1\n  lr: -1\n"},
    ),
    Case(
        "ppo-yaml-nested-100k",
        "YAML: 100k nested flow sequences",
        PPO + " --prompts {good_prompts} --config {bad:run.yaml}",
        "{bad:run.yaml}: invalid YAML: nested too deeply",
        {"run.yaml": {"repeat": ["[", 100_000], "before": "train:\n  lr: ", "after": "]" * 100_000 + "\n"}},
    ),
    Case(
        "plan-yaml-unknown-key",
        "YAML: `lora.rank` given to plan",
        "plan --model {tiny} --config {bad:run.yaml}",
        "{bad:run.yaml}:2: unknown config key 'lora.rank'",
        {"run.yaml": "lora:\n  rank: 8\n"},
    ),
    Case(
        "sft-config-is-directory",
        "path: --config is a directory",
        SFT + " --data {good_chat} --config {bad:configs}",
        "{bad:configs}: cannot read config",
        {"configs": {"dir": {}}},
    ),
    # ---- flags ----------------------------------------------------------------------------------------------
    Case(
        "sft-overwrite-and-resume",
        "flags: --overwrite with --resume",
        SFT + " --data {good_chat} --overwrite --resume",
        "overwrite, resume: choose one",
    ),
    Case(
        "sft-micro-batch-not-dividing",
        "flags: --micro-batch-size 3 of --batch-size 8",
        SFT + " --data {good_chat} --batch-size 8 --micro-batch-size 3",
        "--micro-batch-size: train.micro_batch_size: must divide train.batch_size (8)",
    ),
    Case(
        "sft-lr-not-a-number",
        "flags: --lr fast",
        SFT + " --data {good_chat} --lr fast",
        "--lr: train.lr: expected float, got 'fast'",
    ),
    Case(
        "sft-eval-split-one",
        "flags: --eval-split 1",
        SFT + " --data {good_chat} --eval-split 1",
        "--eval-split: data.eval_split: must be in [0, 1)",
    ),
    Case(
        "sft-budget-without-measurements",
        "flags: --max-kl without --forgetting-every",
        SFT + " --data {good_chat} --max-kl 0.1",
        "forgetting.every: a budget (--max-kl, --max-probe-ppl-increase) needs measurements",
    ),
    Case("sft-nproc-zero", "flags: --nproc 0", SFT + " --data {good_chat} --nproc 0", "--nproc: must be >= 1"),
    Case(
        "sft-set-unknown-key",
        "flags: --set train.lrr=1",
        SFT + " --data {good_chat} --set train.lrr=1",
        "--set: unknown config key 'train.lrr' (did you mean 'train.lr'?)",
    ),
    Case(
        "sft-overlength-choice",
        "flags: --overlength bogus",
        SFT + " --data {good_chat} --overlength bogus",
        "argument --overlength: invalid choice: 'bogus'",
    ),
    Case(
        "sft-device-unknown",
        "flags: --device tpu",
        SFT + " --data {good_chat} --device tpu",
        "device: unknown device 'tpu'",
    ),
    Case("dpo-beta-zero", "flags: --beta 0", DPO + " --data {good_pref} --beta 0", "--beta: dpo.beta: must be > 0"),
    Case(
        "kto-method-full",
        "flags: --method full (KTO needs an adapter)",
        KTO + " --data {good_kto} --method full",
        "method full: KTO's reference is the base with the adapter switched off",
    ),
    Case(
        "reward-lora-r-zero",
        "flags: --lora-r 0",
        REWARD + " --data {good_pref} --lora-r 0",
        "--lora-r: lora.r: must be >= 1",
    ),
    Case(
        "grpo-group-size-one",
        "flags: --group-size 1",
        GRPO + " --prompts {good_prompts} --reward json_valid --group-size 1",
        "--group-size: grpo.group_size: must be >= 2",
    ),
    Case(
        "grpo-no-reward",
        "flags: neither --reward nor --reward-model",
        GRPO + " --prompts {good_prompts}",
        "grpo.reward: no reward given",
    ),
    Case(
        "ppo-rollouts-vs-batch-size",
        "flags: --rollouts-per-step 4 with --batch-size 8",
        PPO + " --prompts {good_prompts} --reward-model {tmp}/rm --rollouts-per-step 4 --batch-size 8",
        "ppo.rollouts_per_step (4), train.batch_size (8)",
    ),
    Case(
        "generate-max-new-tokens-zero",
        "flags: --max-new-tokens 0",
        "generate --model {tiny} --prompt hi --max-new-tokens 0",
        "--max-new-tokens: must be >= 1",
    ),
    Case(
        "generate-top-p-two", "flags: --top-p 2", "generate --model {tiny} --prompt hi --top-p 2", "--top-p in (0, 1]"
    ),
    Case(
        "generate-use-unknown-adapter",
        "flags: --use names no loaded adapter",
        "generate --model {tiny} --adapter {adapter} --prompt hi --use nosuch",
        "--use nosuch: no such adapter",
    ),
    Case(
        "eval-adapter-and-base",
        "flags: --adapter with --base",
        "eval --model {tiny} --adapter {adapter} --base {tiny}",
        "--adapter and --base",
    ),
    Case("eval-limit-zero", "flags: --limit 0", "eval --model {tiny} --data {good_chat} --limit 0", "--limit >= 1"),
    Case("plan-gpus-zero", "flags: --gpus 0", "plan --model {tiny} --gpus 0", "--gpus must be >= 1"),
    Case("plan-mfu-above-one", "flags: --mfu 5", "plan --model {tiny} --mfu 5", "--mfu must be in (0, 1]"),
    Case(
        "plan-recipe-unknown",
        "flags: --recipe nosuch",
        "plan --recipe nosuch",
        "argument --recipe: invalid choice: 'nosuch'",
    ),
    Case(
        "combine-weights-not-numbers",
        "flags: --weights a,b",
        "adapters combine --model {tiny} --adapter {adapter} --weights a,b --out {out}",
        "--weights a,b: comma-separated numbers",
    ),
    Case(
        "combine-weight-count",
        "flags: two weights for one adapter",
        "adapters combine --model {tiny} --adapter {adapter} --weights 0.5,0.5 --out {out}",
        "1 adapter(s) and 2 weight(s)",
    ),
    Case(
        "export-out-not-gguf",
        "flags: --out without .gguf",
        "export --model {tiny} --out {tmp}/model.bin",
        "--out {tmp}/model.bin: a GGUF file name ends in .gguf",
    ),
    Case(
        "export-hf-without-adapter",
        "flags: --format hf without --adapter",
        "export --model {tiny} --format hf --out {out}",
        "--format hf: give --adapter",
    ),
    # ---- paths ----------------------------------------------------------------------------------------------
    Case(
        "sft-data-missing",
        "path: --data does not exist",
        SFT + " --data {tmp}/nope.jsonl",
        "{tmp}/nope.jsonl: no such file",
    ),
    Case(
        "dpo-data-directory",
        "path: --data is a directory",
        DPO + " --data {bad:pairs}",
        "{bad:pairs}: a directory, not a JSONL file",
        {"pairs": {"dir": {"a.jsonl": "{}"}}},
    ),
    Case(
        "validate-unreadable",
        "path: a file without read permission",
        VALIDATE + " {bad:train.jsonl}",
        "{bad:train.jsonl}: cannot read: Permission denied",
        {"train.jsonl": {"text": '{"prompt": "a", "completion": "b"}\n', "mode": 0o000}},
        skip_as_root="running as root: permission bits do not stop root from reading, so no file is unreadable",
    ),
    Case(
        "sft-out-is-file",
        "path: --out is a file",
        SFT + " --data {good_chat}",
        "{out}: exists and is not a directory",
        out="a file the user keeps\n",
    ),
    Case(
        "sft-out-not-empty",
        "path: --out holds another run",
        SFT + " --data {good_chat}",
        "{out}: directory is not empty; pass --overwrite",
        out={"dir": {"marker.txt": "an earlier run\n"}},
    ),
    Case(
        "grpo-resume-nothing",
        "path: --resume of a directory without checkpoints",
        GRPO + " --prompts {good_prompts} --reward json_valid --resume",
        "{out}: nothing to resume",
        out={"dir": {"marker.txt": "an earlier run\n"}},
    ),
    Case(
        "dpo-overwrite-bad-data",
        "path: --overwrite, then a bad row: the old run stays",
        DPO + " --overwrite --data {bad:pairs.jsonl}",
        "{bad:pairs.jsonl}:1: missing `rejected`",
        {"pairs.jsonl": {"jsonl": [{"prompt": "q", "chosen": "a"}]}},
        out={"dir": {"marker.txt": "an earlier run\n"}},
    ),
    Case(
        "sft-overwrite-unknown-target",
        "path: --overwrite, then --target no layer has",
        SFT + " --overwrite --data {good_chat} --target nope_proj",
        "lora.target: no layer named nope_proj",
        out={"dir": {"marker.txt": "an earlier run\n"}},
    ),
    Case(
        "sft-overwrite-bad-probe",
        "path: --overwrite, then an empty --probe",
        SFT + " --overwrite --data {good_chat} --forgetting-every 1 --probe {bad:probe.jsonl}",
        "{bad:probe.jsonl}: empty file",
        {"probe.jsonl": ""},
        out={"dir": {"marker.txt": "an earlier run\n"}},
    ),
    Case(
        "merge-out-is-file",
        "path: --out is a file (with --overwrite)",
        "merge --model {tiny} --adapter {adapter} --overwrite --out {out}",
        "--out {out}: exists and is a file",
        out="a file the user keeps\n",
    ),
    Case(
        "merge-out-not-empty",
        "path: --out holds files",
        "merge --model {tiny} --adapter {adapter} --out {out}",
        "{out}: exists; pass --overwrite",
        out={"dir": {"marker.txt": "somebody's\n"}},
    ),
    Case(
        "export-out-is-directory",
        "path: the .gguf --out is a directory",
        "export --model {tiny} --overwrite --out {bad:model.gguf}",
        "--out {bad:model.gguf}: exists and is a directory",
        {"model.gguf": {"dir": {"marker.txt": "somebody's\n"}}},
    ),
    Case(
        "combine-out-is-file",
        "path: --out is a file",
        "adapters combine --model {tiny} --adapter {adapter} --weights 1 --out {out}",
        "--out {out}: exists and is not a directory",
        out="a file the user keeps\n",
    ),
    # ---- models ---------------------------------------------------------------------------------------------
    Case(
        "sft-model-missing-dir",
        "model: a directory that does not exist",
        "sft --model {tmp}/no-model --data {good_chat} --out {out}",
        "unknown model '{tmp}/no-model'",
    ),
    Case(
        "generate-model-no-config",
        "model: a directory without config.json",
        "generate --model {bad:model} --prompt hi",
        "{bad:model}: not a Hugging Face model directory (no config.json)",
        {"model": {"dir": {"model.safetensors": b"\x00" * 16}}},
    ),
    Case(
        "validate-model-config-corrupt",
        "model: config.json is not JSON",
        VALIDATE.replace("{tiny}", "{bad:model}") + " {good_chat}",
        "{bad:model}/config.json",
        {"model": {"copy": "{tiny}", "set": {"config.json": '{"model_type": "llama", '}}},
    ),
    Case(
        "generate-model-truncated-weights",
        "model: model.safetensors cut short",
        "generate --model {bad:model} --prompt hi",
        "{bad:model}/model.safetensors: cannot load model",
        {"model": {"copy": "{tiny}", "truncate": {"model.safetensors": 100_000}}},
    ),
    Case(
        "sft-model-truncated-weights",
        "model: model.safetensors cut short",
        "sft --model {bad:model} --data {good_chat} --out {out}",
        "{bad:model}/model.safetensors: cannot load model",
        {"model": {"copy": "{tiny}", "truncate": {"model.safetensors": 100_000}}},
    ),
    Case(
        "export-model-truncated-weights",
        "model: model.safetensors cut short",
        "export --model {bad:model} --out {tmp}/m.gguf",
        "{bad:model}/model.safetensors: not a readable safetensors file",
        {"model": {"copy": "{tiny}", "truncate": {"model.safetensors": 100_000}}},
    ),
    Case("plan-model-unknown", "model: no such name", "plan --model {tmp}/nowhere", "--model: unknown model"),
    # ---- adapters -------------------------------------------------------------------------------------------
    Case(
        "merge-adapter-config-corrupt",
        "adapter: adapter_config.json is not JSON",
        "merge --model {tiny} --adapter {bad:adapter} --out {out}",
        "{bad:adapter}/adapter_config.json:1: not valid JSON",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": '{"r": 4, '}}},
    ),
    Case(
        "generate-adapter-config-corrupt",
        "adapter: adapter_config.json is not JSON",
        "generate --model {tiny} --adapter {bad:adapter} --prompt hi",
        "{bad:adapter}/adapter_config.json:1: not valid JSON",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": '{"r": 4, '}}},
    ),
    Case(
        "eval-adapter-config-list",
        "adapter: adapter_config.json is a list",
        "eval --model {tiny} --adapter {bad:adapter}",
        "{bad:adapter}/adapter_config.json:1: must be a JSON object",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": "[4, 8]"}}},
    ),
    Case(
        "info-adapter-config-corrupt",
        "adapter: adapter_config.json is not JSON",
        "adapters info {bad:adapter}",
        "{bad:adapter}/adapter_config.json:1: not valid JSON",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": "{"}}},
    ),
    Case(
        "merge-adapter-other-base",
        "adapter: trained on another base",
        "merge --model {tiny} --adapter {other_adapter} --out {out}",
        ("with 32 input features, {tiny} has 64", "adapter_model.safetensors"),
    ),
    Case(
        "generate-adapter-other-base",
        "adapter: trained on another base",
        "generate --model {tiny} --adapter {other_adapter} --prompt hi",
        "with 32 input features, {tiny} has 64",
    ),
    Case(
        "eval-adapter-other-base",
        "adapter: trained on another base",
        "eval --model {tiny} --adapter {other_adapter}",
        "with 32 input features, {tiny} has 64",
    ),
    Case(
        "merge-adapter-other-rank",
        "adapter: config says r 8, weights are rank 4",
        "merge --model {tiny} --adapter {bad:adapter} --out {out}",
        "{bad:adapter}/adapter_config.json: r: 8, but adapter_model.safetensors holds rank-4 weights",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": RANK_8_CONFIG}}},
    ),
    Case(
        "generate-adapter-other-rank",
        "adapter: config says r 8, weights are rank 4",
        "generate --model {tiny} --adapter {adapter} --adapter {bad:adapter} --prompt hi",
        "{bad:adapter}/adapter_config.json: r: 8",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": RANK_8_CONFIG}}},
    ),
    Case(
        "eval-adapter-other-rank",
        "adapter: config says r 8, weights are rank 4",
        "eval --model {tiny} --adapter {bad:adapter}",
        "{bad:adapter}/adapter_config.json: r: 8",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": RANK_8_CONFIG}}},
    ),
    Case(
        "merge-adapter-truncated",
        "adapter: adapter_model.safetensors cut short",
        "merge --model {tiny} --adapter {bad:adapter} --out {out}",
        "{bad:adapter}/adapter_model.safetensors: not a readable safetensors file",
        {"adapter": {"copy": "{adapter}", "truncate": {"adapter_model.safetensors": 3000}}},
    ),
    Case(
        "generate-adapter-truncated",
        "adapter: adapter_model.safetensors cut short",
        "generate --model {tiny} --adapter {bad:adapter} --prompt hi",
        "{bad:adapter}/adapter_model.safetensors: not a readable safetensors file",
        {"adapter": {"copy": "{adapter}", "truncate": {"adapter_model.safetensors": 20}}},
    ),
    Case(
        "info-adapter-truncated",
        "adapter: adapter_model.safetensors cut short",
        "adapters info {bad:adapter}",
        "{bad:adapter}/adapter_model.safetensors: not a readable safetensors file",
        {"adapter": {"copy": "{adapter}", "truncate": {"adapter_model.safetensors": 3000}}},
    ),
    Case(
        "export-adapter-truncated",
        "adapter: adapter_model.safetensors cut short",
        "export --model {tiny} --adapter {bad:adapter} --out {tmp}/m.gguf",
        "{bad:adapter}/adapter_model.safetensors: not a readable safetensors file",
        {"adapter": {"copy": "{adapter}", "truncate": {"adapter_model.safetensors": 3000}}},
    ),
    Case(
        "generate-adapter-no-weights",
        "adapter: no adapter_model.safetensors (never fetched from the Hub)",
        "generate --model {tiny} --adapter {bad:adapter} --prompt hi",
        "{bad:adapter}: no adapter_model.safetensors",
        {"adapter": {"copy": "{adapter}", "remove": ["adapter_model.safetensors"]}},
    ),
    Case(
        "merge-adapter-missing",
        "adapter: the directory does not exist",
        "merge --model {tiny} --adapter {tmp}/no-adapter --out {out}",
        "{tmp}/no-adapter: not an adapter directory (no adapter_config.json)",
    ),
    Case(
        "merge-adapter-unknown-target",
        "adapter: target_modules names no layer of the base",
        "merge --model {tiny} --adapter {bad:adapter} --out {out}",
        "{bad:adapter}/adapter_config.json: target_modules: nope_proj: no such layer",
        {"adapter": {"copy": "{adapter}", "set": {"adapter_config.json": UNKNOWN_TARGET_CONFIG}}},
    ),
    Case(
        "combine-adapter-other-base",
        "adapter: one of two trained on another base",
        "adapters combine --model {tiny} --adapter {adapter} --adapter {other_adapter} --weights 0.5,0.5 --out {out}",
        "with 32 input features, {tiny} has 64",
    ),
    Case(
        "ppo-reward-model-json-corrupt",
        "adapter: reward_model.json is not JSON",
        PPO + " --prompts {good_prompts} --reward-model {bad:rm}",
        "{bad:rm}/reward_model.json:1: not valid JSON",
        {"rm": {"dir": {"reward_model.json": '{"base": '}}},
    ),
    Case(
        "ppo-reward-model-no-weights",
        "adapter: a reward model without adapter/ or model/",
        PPO + " --prompts {good_prompts} --reward-model {bad:rm}",
        "{bad:rm}: neither adapter/ nor model/ inside",
        {"rm": {"dir": {"reward_model.json": REWARD_MODEL_JSON}}},
    ),
    Case(
        "ppo-reward-adapter-truncated",
        "adapter: the reward model's adapter cut short",
        PPO + " --prompts {good_prompts} --reward-model {bad:rm}",
        "{bad:rm}/adapter/adapter_model.safetensors: not a readable safetensors file",
        {
            "rm": {
                "dir": {
                    "reward_model.json": REWARD_MODEL_JSON,
                    "adapter": {"copy": "{adapter}", "truncate": {"adapter_model.safetensors": 3000}},
                }
            }
        },
    ),
    Case(
        "grpo-reward-model-missing",
        "adapter: --reward-model is not a reward model",
        GRPO + " --prompts {good_prompts} --reward-model {tmp}",
        "{tmp}: not a reward model (no reward_model.json",
    ),
    # ---- reward specs ---------------------------------------------------------------------------------------
    Case(
        "grpo-reward-unknown-name",
        "reward spec: an unknown name",
        GRPO + " --prompts {good_prompts} --reward json_vaild",
        "unknown reward 'json_vaild'",
    ),
    Case(
        "grpo-reward-bad-regex",
        "reward spec: regex:[",
        GRPO + " --prompts {good_prompts} --reward regex:[a-",
        "reward 'regex:[a-': invalid regular expression",
    ),
    Case(
        "grpo-reward-module-missing",
        "reward spec: module:function, no such module",
        GRPO + " --prompts {good_prompts} --reward ts_no_such_module:score",
        "reward 'ts_no_such_module:score': no module named 'ts_no_such_module'",
    ),
    Case(
        "grpo-reward-function-missing",
        "reward spec: module:function, no such function",
        GRPO + " --prompts {good_prompts} --reward ts_corpus_rewards:scroe",
        "reward 'ts_corpus_rewards:scroe': 'ts_corpus_rewards' has no attribute 'scroe'",
        {"ts_corpus_rewards.py": "def score(prompt, completion, row):\n    return 1.0\n"},
    ),
    Case(
        "grpo-json-schema-missing",
        "reward spec: json_schema: a missing file",
        GRPO + " --prompts {good_prompts} --reward json_schema:{tmp}/schema.json",
        "{tmp}/schema.json: cannot read the JSON Schema",
    ),
    Case(
        "grpo-json-schema-invalid",
        "reward spec: json_schema: not a schema",
        GRPO + " --prompts {good_prompts} --reward json_schema:{bad:schema.json}",
        "{bad:schema.json}: not a valid JSON Schema",
        {"schema.json": '{"type": 5}'},
    ),
    Case(
        "grpo-grader-unknown-type",
        "reward spec: grader: an unknown type",
        GRPO + " --prompts {good_prompts} --reward grader:{bad:grader.json}",
        "{bad:grader.json}: grader.type: 'nope' is not one of",
        {"grader.json": '{"type": "nope"}'},
    ),
    Case(
        "grpo-reward-twice",
        "reward spec: the same reward twice",
        GRPO + " --prompts {good_prompts} --reward json_valid,json_valid",
        "--reward: 'json_valid' is given twice",
    ),
    Case(
        "grpo-length-penalty-bad",
        "reward spec: length_penalty:abc",
        GRPO + " --prompts {good_prompts} --reward length_penalty:abc",
        "the target must be a positive whole number of words, got 'abc'",
    ),
]
