"""The config schema: dataclasses whose fields carry their CLI flag and help text.

A field's `metadata` holds `flag` (the command-line option), `help` and, where the value is one of a
fixed set, `choices`. `load.py` turns the schema into argparse options, Python keyword arguments and
YAML keys, so a new option is added in exactly one place.

Every recipe's config is a `RunConfig` (model, method, output, device, LoRA shape, training loop) with
its own sections composed onto it: `data` of the recipe's kind, `forgetting` for the recipes the guard
serves (sft, dpo, grpo, ppo), `sampling` for those that sample (grpo, ppo), and the recipe's options.
Each section checks its own values (`check()`); the config checks what spans sections. Nothing is
rewritten behind the user's back: two settings that disagree are an error naming both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunesmith.errors import ConfigError

METHODS = ("lora", "qlora", "full")
DEFAULT_LR = {"full": 1e-5, "lora": 2e-4, "qlora": 2e-4}
# Preference optimisation and RL move a model further per step than SFT (DPO pushes log-ratios apart
# without bound; PPO/GRPO follow their own samples), so their customary rates are lower: DPO papers
# use 5e-7..1e-6 for full fine-tuning.
POLICY_DEFAULT_LR = {"full": 1e-6, "lora": 5e-5, "qlora": 5e-5}
PREFERENCE_LOSS_NAMES = (
    "dpo",
    "ipo",
    "orpo",
    "simpo",
)  # keys of tunesmith.losses.dpo.PREFERENCE_LOSSES (a test checks)
GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo")  # tunesmith.losses.grpo.grpo_loss's reductions
IMPORTANCE_LEVELS = ("token", "sequence")  # per-token policy ratios, or GSPO's one per completion


def require(checks: list[tuple[bool, str, str]]) -> None:
    """Raise a ConfigError for the first (ok, key, why) that fails."""
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why}")


def opt(default: Any, flag: str, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its command-line flag and help text."""
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices})


@dataclass
class DataConfig:
    train: str | None = opt(None, "--data", "training data, JSONL: chat `messages` or `prompt`/`completion`")
    eval: str | None = opt(None, "--eval-data", "evaluation data in the same format")
    eval_split: float = opt(0.0, "--eval-split", "fraction of the training data held out for eval when no --eval-data")
    max_length: int = opt(512, "--max-length", "tokens per example")
    overlength: str = opt("truncate", "--overlength", "what to do with longer examples", ("truncate", "drop"))
    packing: bool = opt(
        True, "--packing", "pack each micro-batch into one row without padding, attention isolated per example"
    )
    shared_prefix: bool = opt(
        True,
        "--shared-prefix",
        "with packing, compute a prompt prefix that examples of a "
        "micro-batch share (such as one system prompt) once: the same loss, fewer tokens",
    )
    train_on_prompt: bool = opt(False, "--train-on-prompt", "compute the loss on every token, not only the assistant's")
    replay: str | None = opt(
        None,
        "--replay",
        "mix general examples into training against forgetting: `self` "
        "(the base's own answers to bundled general prompts) or an SFT data FILE",
    )
    replay_ratio: float = opt(
        0.1, "--replay-ratio", "share of the training examples that are replayed general examples"
    )

    def check(self) -> None:
        if self.train is None:
            raise ConfigError("data.train: no training data given (use --data FILE)")
        require(
            [
                (self.max_length >= 8, "data.max_length", "must be >= 8"),
                (0 <= self.eval_split < 1, "data.eval_split", "must be in [0, 1)"),
                (0 < self.replay_ratio < 1, "data.replay_ratio", "must be in (0, 1)"),
            ]
        )


@dataclass
class PreferenceDataConfig:
    train: str | None = opt(
        None,
        "--data",
        "preference pairs, JSONL: OpenAI `input`/`preferred_output`/"
        "`non_preferred_output` or `prompt`/`chosen`/`rejected`",
    )
    eval: str | None = opt(None, "--eval-data", "evaluation pairs in the same format")
    eval_split: float = opt(0.0, "--eval-split", "fraction of the training pairs held out for eval when no --eval-data")
    max_length: int = opt(512, "--max-length", "tokens per prompt + completion")
    overlength: str = opt("truncate", "--overlength", "what to do with longer pairs", ("truncate", "drop"))
    packing: bool = opt(
        False,
        "--packing",
        "pack the micro-batch's sequences into one row, each with its own prompt, instead of each pair's prompt once",
    )

    def check(self) -> None:
        if self.train is None:
            raise ConfigError("data.train: no training data given (use --data FILE)")
        require(
            [
                (self.max_length >= 8, "data.max_length", "must be >= 8"),
                (0 <= self.eval_split < 1, "data.eval_split", "must be in [0, 1)"),
            ]
        )


@dataclass
class LoraConfig:
    r: int = opt(16, "--lora-r", "LoRA rank")
    alpha: float = opt(32.0, "--lora-alpha", "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(
        0.0, "--lora-dropout", "dropout on the LoRA input (0 is fastest: CPU dropout masks cost ~40%% of a step)"
    )
    target: str = opt("all-linear", "--target", "layers to adapt: all-linear, or a list such as q_proj,v_proj")

    def check(self) -> None:
        require([(self.r >= 1, "lora.r", "must be >= 1"), (0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")])


@dataclass
class TrainConfig:
    lr: float | None = opt(
        None, "--lr", "peak learning rate (default sft: 1e-5 full, 2e-4 lora/qlora; dpo: 1e-6 full, 5e-5 lora/qlora)"
    )
    epochs: int = opt(1, "--epochs", "passes over the training data")
    max_steps: int | None = opt(None, "--max-steps", "optimizer steps; overrides --epochs")
    batch_size: int | None = opt(
        None, "--batch-size", "examples per optimizer step, global (default 8; ppo: --rollouts-per-step)"
    )
    micro_batch_size: int | None = opt(None, "--micro-batch-size", "examples per forward; accumulation = batch / micro")
    schedule: str = opt("cosine", "--schedule", "learning-rate decay after warm-up", ("cosine", "linear", "constant"))
    warmup_ratio: float = opt(0.05, "--warmup-ratio", "fraction of the steps spent warming up")
    weight_decay: float = opt(0.0, "--weight-decay", "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "--max-grad-norm", "clip the gradient norm to this (0: no clipping)")
    seed: int = opt(42, "--seed", "seed for initialisation, data order and dropout")
    gradient_checkpointing: bool = opt(False, "--gradient-checkpointing", "recompute activations in backward")
    compile: bool = opt(
        False,
        "--compile",
        "torch.compile the decoder layers (compiled once, shared by all layers: "
        "fuses the element-wise work; costs a minute or so up front, pays on long runs; sft, dpo, reward)",
    )
    precision: str = opt(
        "auto", "--precision", "auto: bf16 autocast where the device supports it", ("auto", "fp32", "bf16")
    )
    eval_every: int = opt(0, "--eval-every", "evaluate before training and every N steps (0: only at the end)")
    save_every: int = opt(50, "--save-every", "checkpoint every N steps (0: only at the end)")
    save_every_minutes: float = opt(
        0.0, "--save-every-minutes", "also checkpoint when M minutes have passed since the last one (0: off)"
    )
    memory_check: bool = opt(
        True,
        "--memory-check",
        "before loading, refuse a run whose planned memory exceeds the device's free memory",
    )
    max_bad_steps: int = opt(
        5, "--max-bad-steps", "stop after N steps in a row with a NaN/inf loss or gradient norm (each is skipped)"
    )
    keep_checkpoints: int = opt(
        3, "--keep-checkpoints", "keep the newest N checkpoints; older ones go once a newer one is complete"
    )
    log_every: int = opt(1, "--log-every", "write metrics every N steps")

    def check(self) -> None:
        """After the recipe filled `lr` and `batch_size`; fills `micro_batch_size` (= batch_size unless given)."""
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        assert self.lr is not None and self.batch_size is not None and self.micro_batch_size is not None
        require(
            [
                (self.lr > 0, "train.lr", "must be > 0"),
                (self.epochs >= 1, "train.epochs", "must be >= 1"),
                (self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1"),
                (self.batch_size >= 1, "train.batch_size", "must be >= 1"),
                (self.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1"),
                (
                    self.batch_size % self.micro_batch_size == 0,
                    "train.micro_batch_size",
                    f"must divide train.batch_size ({self.batch_size})",
                ),
                (0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)"),
                (self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0"),
                (self.log_every >= 1, "train.log_every", "must be >= 1"),
                (self.save_every >= 0 and self.eval_every >= 0, "train.save_every/eval_every", "must be >= 0"),
                (self.save_every_minutes >= 0, "train.save_every_minutes", "must be >= 0"),
                (self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1"),
                (self.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1"),
            ]
        )


@dataclass
class ForgettingOptions:
    every: int = opt(
        0, "--forgetting-every", "measure probe perplexity and KL to the base every N steps (and at the end; 0: off)"
    )
    probe: str | None = opt(
        None,
        "--probe",
        "probe prompts, JSONL like --prompts, optional `answer` per row "
        "(default: the bundled general-domain probe, answered by the base)",
    )
    probe_size: int = opt(96, "--probe-size", "probe prompts measured during training, spread over the file (0: all)")
    max_kl: float | None = opt(
        None,
        "--max-kl",
        "stop when kl_to_base (nats per token) exceeds this; the last measurement within budget is kept",
    )
    max_probe_ppl_increase: float | None = opt(
        None,
        "--max-probe-ppl-increase",
        "stop when the probe perplexity rises by more than this fraction of the base's (0.05 = 5%%)",
    )

    def check(self) -> None:
        budget = self.max_kl is not None or self.max_probe_ppl_increase is not None
        require(
            [
                (self.every >= 0, "forgetting.every", "must be >= 0"),
                (self.probe_size >= 0, "forgetting.probe_size", "must be >= 0 (0: the whole probe)"),
                (self.max_kl is None or self.max_kl > 0, "forgetting.max_kl", "must be > 0"),
                (
                    self.max_probe_ppl_increase is None or self.max_probe_ppl_increase > 0,
                    "forgetting.max_probe_ppl_increase",
                    "must be > 0 (a fraction: 0.05 = 5%)",
                ),
                (
                    self.every > 0 or not budget,
                    "forgetting.every",
                    "a budget (--max-kl, --max-probe-ppl-increase) needs measurements: set --forgetting-every N",
                ),
            ]
        )


# Learning rates past which forgetting is the usual outcome (a warning, not an error; more than 3 epochs
# is warned about by train.schedule.plan_steps, which knows the data size).
LR_WARNING = {"full": 5e-5, "lora": 2e-3, "qlora": 2e-3}


@dataclass
class RunConfig:
    """What every recipe's run has: the base, the method, where it goes, the adapter, the training loop."""

    model: str = opt("smollm2-135m-instruct", "--model", "alias, local Hugging Face directory or .gguf file")
    method: str = opt("lora", "--method", "what trains", METHODS)
    out: str | None = opt(None, "--out", "run directory")
    overwrite: bool = opt(False, "--overwrite", "replace a non-empty run directory")
    resume: bool = opt(False, "--resume", "continue from the last checkpoint in --out")
    resume_anyway: bool = opt(
        False, "--resume-anyway", "with --resume: continue even if the data, the base or a training setting changed"
    )
    device: str = opt("auto", "--device", "auto, cpu, cuda or cuda:N")
    trust_remote_code: bool = opt(
        False,
        "--trust-remote-code",
        "load a model whose architecture is Python code in its own directory (config.json's auto_map): "
        "that code runs, so only for a model you trust",
    )
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    default_lr: ClassVar[dict[str, float]] = DEFAULT_LR
    default_batch_size: ClassVar[int] = 8

    def validate(self) -> None:
        """Fill derived defaults (learning rate per method, batch size), check every section, then what spans them."""
        if self.train.lr is None:
            self.train.lr = self.default_lr[self.method]
        if self.train.batch_size is None:
            self.train.batch_size = self.default_batch_size
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "check"):
                section.check()
        if self.out is None:
            raise ConfigError("out: no run directory given (use --out DIR)")
        if self.overwrite and self.resume:
            raise ConfigError("overwrite, resume: choose one; --resume continues the run that --overwrite would delete")

    def guard_rail_warnings(self) -> list[str]:
        """Settings that usually end in forgetting, each with the reason (printed, never refused)."""
        warnings = []
        lr = self.train.lr if self.train.lr is not None else self.default_lr[self.method]
        if lr > LR_WARNING[self.method]:
            warnings.append(
                f"learning rate {lr:g} is above {LR_WARNING[self.method]:g} for {self.method} "
                f"fine-tuning (default {self.default_lr[self.method]:g}): large steps overwrite what "
                "the base knew; watch --forgetting-every or lower --lr"
            )
        return warnings


@dataclass
class SFTConfig(RunConfig):
    """Supervised fine-tuning on demonstrations."""

    data: DataConfig = field(default_factory=DataConfig)
    forgetting: ForgettingOptions = field(default_factory=ForgettingOptions)


@dataclass
class DPOOptions:
    beta: float = opt(
        0.1,
        "--beta",
        "strength of the pull towards the reference (DPO β; IPO τ); ORPO's λ; SimPO's β (its paper uses 2-10)",
    )
    loss: str = opt(
        "dpo",
        "--loss",
        "preference loss: dpo, ipo (towards the base); orpo, simpo (reference-free)",
        PREFERENCE_LOSS_NAMES,
    )
    gamma: float = opt(0.5, "--gamma", "SimPO's target reward margin γ")
    sft_weight: float = opt(0.0, "--sft-weight", "add this times the chosen answer's NLL per token (0: off)")
    precompute_ref: bool = opt(
        False,
        "--precompute-ref",
        "compute the reference log-probs once before training "
        "(always on for full fine-tuning; saves lora/qlora one forward per step)",
    )

    def check(self) -> None:
        require([(self.beta > 0, "dpo.beta", "must be > 0"), (self.sft_weight >= 0, "dpo.sft_weight", "must be >= 0")])


@dataclass
class DPOConfig(RunConfig):
    """Direct preference optimisation (and IPO, ORPO, SimPO) on chosen/rejected pairs."""

    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    dpo: DPOOptions = field(default_factory=DPOOptions)
    forgetting: ForgettingOptions = field(default_factory=ForgettingOptions)
    default_lr: ClassVar[dict[str, float]] = POLICY_DEFAULT_LR


@dataclass
class RewardConfig(RunConfig):
    """A reward model: a scalar head on the base, trained on preference pairs (it does not generate, so the
    forgetting guard, which measures drift on generated probe answers, has no section here)."""

    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)


@dataclass
class PromptDataConfig:
    train: str | None = opt(
        None,
        "--prompts",
        "prompts, JSONL: `messages` ending with a user turn, or `prompt`; "
        "other fields (e.g. `reference`) reach the reward functions",
    )
    eval: str | None = opt(None, "--eval-prompts", "held-out prompts: greedy replies scored before and after")
    max_prompt_length: int = opt(256, "--max-prompt-length", "longer prompts keep their last tokens")

    def check(self) -> None:
        if self.train is None:
            raise ConfigError("data.train: no prompts given (use --prompts FILE)")
        require([(self.max_prompt_length >= 8, "data.max_prompt_length", "must be >= 8")])


@dataclass
class SamplingOptions:
    """How the recipes that learn from their own samples (grpo, ppo) sample."""

    temperature: float = opt(1.0, "--temperature", "sampling temperature")
    top_p: float = opt(1.0, "--top-p", "nucleus sampling")
    max_new_tokens: int = opt(64, "--max-new-tokens", "tokens per sampled completion")
    samples_every: int = opt(5, "--samples-every", "write a few sampled completions to samples.jsonl every N steps")

    def check(self) -> None:
        require(
            [
                (self.temperature > 0, "sampling.temperature", "must be > 0 (sampling)"),
                (0 < self.top_p <= 1, "sampling.top_p", "must be in (0, 1]"),
                (self.max_new_tokens >= 1, "sampling.max_new_tokens", "must be >= 1"),
                (self.samples_every >= 0, "sampling.samples_every", "must be >= 0"),
            ]
        )


# Sampling runs the same layers with a growing KV cache, one new length per token: compiled layers would
# recompile (or fall back) all the time. The recipes that sample train eagerly.
NO_COMPILE_WITH_SAMPLING = "not with a recipe that samples (grpo, ppo); use it with sft, dpo or reward"


@dataclass
class SamplingRunConfig(RunConfig):
    """A recipe that learns from its own samples: prompts, the sampling section, the forgetting guard."""

    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    forgetting: ForgettingOptions = field(default_factory=ForgettingOptions)
    default_lr: ClassVar[dict[str, float]] = POLICY_DEFAULT_LR

    def validate(self) -> None:
        super().validate()
        require([(not self.train.compile, "train.compile", NO_COMPILE_WITH_SAMPLING)])


@dataclass
class GRPOOptions:
    reward: str = opt(
        "",
        "--reward",
        "reward functions: json_valid, json_fields, json_schema:PATH, regex:PATTERN, exact_match, "
        "length_penalty[:N], grader:PATH (an OpenAI grader in JSON), module:function; comma-separated",
    )
    reward_model: str | None = opt(
        None, "--reward-model", "a `tunesmith reward` run whose score is added to the reward"
    )
    group_size: int = opt(4, "--group-size", "completions sampled per prompt (K)")
    kl_coef: float = opt(0.04, "--kl-coef", "weight of the KL to the frozen base (0: no reference pass)")
    clip_range: float = opt(0.2, "--clip-range", "PPO clip range ε of the policy ratio")
    clip_range_high: float | None = opt(
        None, "--clip-range-high", "upper clip ε_high of the ratio, 1 + ε_high (DAPO's clip-higher; default ε)"
    )
    loss_type: str = opt(
        "grpo",
        "--loss-type",
        "grpo: mean of per-completion token means; dapo: one token mean over the step; dr_grpo: token sum over "
        "completions x max new tokens, advantages not divided by the group's std",
        GRPO_LOSS_TYPES,
    )
    importance_level: str = opt(
        "token",
        "--importance-level",
        "token: a policy ratio per token; sequence: one per completion (GSPO)",
        IMPORTANCE_LEVELS,
    )
    epochs_per_step: int = opt(1, "--epochs-per-step", "optimisation passes over each batch of samples")

    def check(self) -> None:
        if not self.reward and not self.reward_model:
            raise ConfigError("grpo.reward: no reward given (use --reward NAME[,NAME...] and/or --reward-model DIR)")
        require(
            [
                (self.group_size >= 2, "grpo.group_size", "must be >= 2 (advantages compare samples of one prompt)"),
                (self.kl_coef >= 0, "grpo.kl_coef", "must be >= 0"),
                (self.clip_range > 0, "grpo.clip_range", "must be > 0"),
                (self.clip_range_high is None or self.clip_range_high > 0, "grpo.clip_range_high", "must be > 0"),
                (self.epochs_per_step >= 1, "grpo.epochs_per_step", "must be >= 1"),
            ]
        )


@dataclass
class GRPOConfig(SamplingRunConfig):
    """Group relative policy optimisation: K samples per prompt, group-normalised rewards, KL to the base."""

    grpo: GRPOOptions = field(default_factory=GRPOOptions)

    def validate(self) -> None:
        super().validate()
        if self.method == "full" and self.grpo.kl_coef > 0:
            raise ConfigError(
                "method full: the reference is the base with the adapter switched off; full "
                "fine-tuning has none, so use --method lora/qlora or --kl-coef 0"
            )


@dataclass
class PPOOptions:
    reward_model: str | None = opt(None, "--reward-model", "a `tunesmith reward` run (lora/qlora on the same base)")
    rollouts_per_step: int | None = opt(
        None,
        "--rollouts-per-step",
        "prompts sampled (one completion each) per step: the step's batch (default 8, or --batch-size)",
    )
    ppo_epochs: int = opt(4, "--ppo-epochs", "optimisation passes over each batch of rollouts")
    kl_coef: float = opt(0.05, "--kl-coef", "per-token KL penalty to the frozen base (initial value if --kl-target)")
    kl_target: float | None = opt(
        None, "--kl-target", "adapt kl_coef so the per-sequence KL tracks this (Ziegler et al.)"
    )
    kl_horizon: float = opt(10000.0, "--kl-horizon", "rollouts over which the adaptive coefficient reacts")
    gamma: float = opt(1.0, "--gamma", "discount")
    lam: float = opt(0.95, "--lam", "GAE lambda")
    clip_range: float = opt(0.2, "--clip-range", "policy ratio clip ε")
    clip_range_value: float = opt(0.2, "--clip-range-value", "value clip ε")
    vf_coef: float = opt(0.1, "--vf-coef", "weight of the value loss")
    whiten_advantages: bool = opt(True, "--whiten-advantages", "normalise advantages over the batch")

    def check(self) -> None:
        if not self.reward_model:
            raise ConfigError(
                "ppo.reward_model: no reward model given (use --reward-model DIR from `tunesmith reward`)"
            )
        require(
            [
                (
                    self.rollouts_per_step is None or self.rollouts_per_step >= 2,
                    "ppo.rollouts_per_step",
                    "must be >= 2 (advantages are whitened)",
                ),
                (self.ppo_epochs >= 1, "ppo.ppo_epochs", "must be >= 1"),
                (self.kl_coef >= 0, "ppo.kl_coef", "must be >= 0"),
                (self.kl_target is None or self.kl_target > 0, "ppo.kl_target", "must be > 0"),
                (0 < self.gamma <= 1 and 0 <= self.lam <= 1, "ppo.gamma/lam", "gamma in (0, 1], lam in [0, 1]"),
                (self.clip_range > 0 and self.clip_range_value > 0, "ppo.clip_range", "must be > 0"),
            ]
        )


@dataclass
class PPOConfig(SamplingRunConfig):
    """PPO against a reward model; policy, value head, reference and reward share one copy of the base."""

    ppo: PPOOptions = field(default_factory=PPOOptions)

    def validate(self) -> None:
        # one optimizer batch is one batch of rollouts: the two names must agree, and either one sets both
        o, t = self.ppo, self.train
        if o.rollouts_per_step is not None and t.batch_size is not None and o.rollouts_per_step != t.batch_size:
            raise ConfigError(
                f"ppo.rollouts_per_step ({o.rollouts_per_step}), train.batch_size ({t.batch_size}): "
                "a PPO step's batch is its rollouts; give one of them, or the same value"
            )
        o.rollouts_per_step = t.batch_size = o.rollouts_per_step or t.batch_size or self.default_batch_size
        super().validate()
        if self.method == "full":
            raise ConfigError(
                "method full: PPO's reference is the base with the adapter switched off; use --method lora or qlora"
            )


@dataclass
class UnpairedDataConfig(PreferenceDataConfig):
    train: str | None = opt(
        None,
        "--data",
        "unpaired examples, JSONL: `prompt`/`completion`/`label` (true: "
        "desirable) or `messages` ending with the assistant's reply, plus `label`",
    )
    eval: str | None = opt(None, "--eval-data", "evaluation examples in the same format")
    packing: bool = opt(True, "--packing", "pack each micro-batch's sequences into one row without padding")


@dataclass
class KTOOptions:
    beta: float = opt(0.1, "--beta", "KTO β: how sharply the value function saturates around the reference point")
    desirable_weight: float = opt(1.0, "--desirable-weight", "λ_D, weight of the desirable examples' loss")
    undesirable_weight: float = opt(1.0, "--undesirable-weight", "λ_U, weight of the undesirable examples' loss")

    def check(self) -> None:
        require(
            [
                (self.beta > 0, "kto.beta", "must be > 0"),
                (
                    self.desirable_weight > 0 and self.undesirable_weight > 0,
                    "kto.desirable_weight/undesirable_weight",
                    "must be > 0",
                ),
            ]
        )


@dataclass
class KTOConfig(RunConfig):
    """Kahneman-Tversky optimisation on unpaired examples labelled desirable or undesirable."""

    data: UnpairedDataConfig = field(default_factory=UnpairedDataConfig)
    kto: KTOOptions = field(default_factory=KTOOptions)
    forgetting: ForgettingOptions = field(default_factory=ForgettingOptions)
    default_lr: ClassVar[dict[str, float]] = POLICY_DEFAULT_LR

    def validate(self) -> None:
        super().validate()
        if self.method == "full":
            raise ConfigError(
                "method full: KTO's reference is the base with the adapter switched off; use --method lora or qlora"
            )
