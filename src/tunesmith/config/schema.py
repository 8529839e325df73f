"""The config schema: dataclasses whose fields carry their CLI flag and help text.

A field's `metadata` holds `flag` (the command-line option), `help` and, where the value is one of a
fixed set, `choices`. `load.py` turns the schema into argparse options and validates YAML against it,
so a new option is added in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunesmith.errors import ConfigError

METHODS = ("lora", "qlora", "full")
DEFAULT_LR = {"full": 1e-5, "lora": 2e-4, "qlora": 2e-4}
# Preference optimisation and RL move a model further per step than SFT (DPO pushes log-ratios apart
# without bound; PPO/GRPO follow their own samples), so their customary rates are lower: DPO papers
# use 5e-7..1e-6 for full fine-tuning.
POLICY_DEFAULT_LR = {"full": 1e-6, "lora": 5e-5, "qlora": 5e-5}
PREFERENCE_LOSS_NAMES = ("dpo", "ipo")  # keys of tunesmith.losses.dpo.PREFERENCE_LOSSES (a test checks)


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
    packing: bool = opt(True, "--packing", "pack each micro-batch into one row without padding, attention isolated per example")
    shared_prefix: bool = opt(True, "--shared-prefix", "with packing, compute a prompt prefix that examples of a "
                              "micro-batch share (such as one system prompt) once: the same loss, fewer tokens")
    train_on_prompt: bool = opt(False, "--train-on-prompt", "compute the loss on every token, not only the assistant's")
    replay: str | None = opt(None, "--replay", "mix general examples into training against forgetting: `self` "
                             "(the base's own answers to bundled general prompts) or an SFT data FILE")
    replay_ratio: float = opt(0.1, "--replay-ratio", "share of the training examples that are replayed general examples")


@dataclass
class PreferenceDataConfig:
    train: str | None = opt(None, "--data", "preference pairs, JSONL: OpenAI `input`/`preferred_output`/"
                            "`non_preferred_output` or `prompt`/`chosen`/`rejected`")
    eval: str | None = opt(None, "--eval-data", "evaluation pairs in the same format")
    eval_split: float = opt(0.0, "--eval-split", "fraction of the training pairs held out for eval when no --eval-data")
    max_length: int = opt(512, "--max-length", "tokens per prompt + completion")
    overlength: str = opt("truncate", "--overlength", "what to do with longer pairs", ("truncate", "drop"))
    packing: bool = opt(False, "--packing", "pack the micro-batch's sequences into one row instead of "
                        "one row per pair with the prompt computed once")


@dataclass
class LoraConfig:
    r: int = opt(16, "--lora-r", "LoRA rank")
    alpha: float = opt(32.0, "--lora-alpha", "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(0.0, "--lora-dropout", "dropout on the LoRA input (0 is fastest: CPU dropout masks cost ~40%% of a step)")
    target: str = opt("all-linear", "--target", "layers to adapt: all-linear, or a list such as q_proj,v_proj")


@dataclass
class TrainConfig:
    lr: float | None = opt(None, "--lr", "peak learning rate (default sft: 1e-5 full, 2e-4 lora/qlora; dpo: 1e-6 full, 5e-5 lora/qlora)")
    epochs: int = opt(1, "--epochs", "passes over the training data")
    max_steps: int | None = opt(None, "--max-steps", "optimizer steps; overrides --epochs")
    batch_size: int = opt(8, "--batch-size", "examples per optimizer step (global)")
    micro_batch_size: int | None = opt(None, "--micro-batch-size", "examples per forward; accumulation = batch / micro")
    schedule: str = opt("cosine", "--schedule", "learning-rate decay after warm-up", ("cosine", "linear", "constant"))
    warmup_ratio: float = opt(0.05, "--warmup-ratio", "fraction of the steps spent warming up")
    weight_decay: float = opt(0.0, "--weight-decay", "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "--max-grad-norm", "clip the gradient norm to this (0: no clipping)")
    seed: int = opt(42, "--seed", "seed for initialisation, data order and dropout")
    gradient_checkpointing: bool = opt(False, "--gradient-checkpointing", "recompute activations in backward")
    compile: bool = opt(False, "--compile", "torch.compile the decoder layers (compiled once, shared by all layers: "
                        "fuses the element-wise work; costs a minute or so up front, pays on long runs; sft, dpo, reward)")
    precision: str = opt("auto", "--precision", "auto: bf16 autocast where the device supports it", ("auto", "fp32", "bf16"))
    eval_every: int = opt(0, "--eval-every", "evaluate before training and every N steps (0: only at the end)")
    save_every: int = opt(50, "--save-every", "checkpoint every N steps (0: only at the end)")
    log_every: int = opt(1, "--log-every", "write metrics every N steps")


@dataclass
class ForgettingOptions:
    every: int = opt(0, "--forgetting-every", "measure probe perplexity and KL to the base every N steps "
                     "(and at the end; 0: off)")
    probe: str | None = opt(None, "--probe", "probe prompts, JSONL like --prompts, optional `answer` per row "
                            "(default: the bundled general-domain probe, answered by the base)")
    probe_size: int = opt(96, "--probe-size", "probe prompts measured during training, spread over the file (0: all)")
    max_kl: float | None = opt(None, "--max-kl", "stop when kl_to_base (nats per token) exceeds this; "
                               "the last measurement within budget is kept")
    max_probe_ppl_increase: float | None = opt(None, "--max-probe-ppl-increase", "stop when the probe perplexity "
                                               "rises by more than this fraction of the base's (0.05 = 5%%)")


# Learning rates past which forgetting is the usual outcome (a warning, not an error; more than 3 epochs
# is warned about by train.schedule.plan_steps, which knows the data size).
LR_WARNING = {"full": 5e-5, "lora": 2e-3, "qlora": 2e-3}


@dataclass
class SFTConfig:
    model: str = opt("smollm2-135m-instruct", "--model", "alias, local Hugging Face directory or .gguf file")
    method: str = opt("lora", "--method", "what trains", METHODS)
    out: str | None = opt(None, "--out", "run directory")
    overwrite: bool = opt(False, "--overwrite", "replace a non-empty run directory")
    resume: bool = opt(False, "--resume", "continue from the last checkpoint in --out")
    device: str = opt("auto", "--device", "auto, cpu, cuda or cuda:N")
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    forgetting: ForgettingOptions = field(default_factory=ForgettingOptions)

    default_lr: ClassVar[dict[str, float]] = DEFAULT_LR

    def validate(self) -> None:
        """Check values that types alone cannot; fill derived defaults (learning rate per method)."""
        if self.data.train is None:
            raise ConfigError("data.train: no training data given (use --data FILE)")
        if self.out is None:
            raise ConfigError("out: no run directory given (use --out DIR)")
        if self.overwrite and self.resume:
            raise ConfigError("overwrite, resume: choose one; --resume continues the run that --overwrite would delete")
        t = self.train
        if t.lr is None:
            t.lr = self.default_lr[self.method]
        if t.micro_batch_size is None:
            t.micro_batch_size = t.batch_size
        checks = [
            (t.lr > 0, "train.lr", "must be > 0"),
            (t.epochs >= 1, "train.epochs", "must be >= 1"),
            (t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1"),
            (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1"),
            (t.batch_size % t.micro_batch_size == 0, "train.micro_batch_size",
             f"must divide train.batch_size ({t.batch_size})"),
            (0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)"),
            (t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0"),
            (t.log_every >= 1, "train.log_every", "must be >= 1"),
            (t.save_every >= 0 and t.eval_every >= 0, "train.save_every/eval_every", "must be >= 0"),
            (getattr(self.data, "max_length", 8) >= 8, "data.max_length", "must be >= 8"),
            (0 <= getattr(self.data, "eval_split", 0) < 1, "data.eval_split", "must be in [0, 1)"),
            (self.lora.r >= 1, "lora.r", "must be >= 1"),
            (0 <= self.lora.dropout < 1, "lora.dropout", "must be in [0, 1)"),
            (0 < getattr(self.data, "replay_ratio", 0.5) < 1, "data.replay_ratio", "must be in (0, 1)"),
        ]
        f = self.forgetting
        budget = f.max_kl is not None or f.max_probe_ppl_increase is not None
        checks += [
            (f.every >= 0, "forgetting.every", "must be >= 0"),
            (f.probe_size >= 0, "forgetting.probe_size", "must be >= 0 (0: the whole probe)"),
            (f.max_kl is None or f.max_kl > 0, "forgetting.max_kl", "must be > 0"),
            (f.max_probe_ppl_increase is None or f.max_probe_ppl_increase > 0, "forgetting.max_probe_ppl_increase",
             "must be > 0 (a fraction: 0.05 = 5%)"),
            (f.every > 0 or not budget, "forgetting.every",
             "a budget (--max-kl, --max-probe-ppl-increase) needs measurements: set --forgetting-every N"),
        ]
        require(checks)

    def guard_rail_warnings(self) -> list[str]:
        """Settings that usually end in forgetting, each with the reason (printed, never refused)."""
        warnings = []
        lr = self.train.lr if self.train.lr is not None else self.default_lr[self.method]
        if lr > LR_WARNING[self.method]:
            warnings.append(f"learning rate {lr:g} is above {LR_WARNING[self.method]:g} for {self.method} "
                            f"fine-tuning (default {self.default_lr[self.method]:g}): large steps overwrite what "
                            "the base knew; watch --forgetting-every or lower --lr")
        return warnings


@dataclass
class DPOOptions:
    beta: float = opt(0.1, "--beta", "strength of the pull towards the reference (DPO β; IPO τ)")
    loss: str = opt("dpo", "--loss", "preference loss", PREFERENCE_LOSS_NAMES)
    sft_weight: float = opt(0.0, "--sft-weight", "add this times the chosen answer's NLL per token (0: off)")
    precompute_ref: bool = opt(False, "--precompute-ref", "compute the reference log-probs once before training "
                               "(always on for full fine-tuning; saves lora/qlora one forward per step)")


@dataclass
class DPOConfig(SFTConfig):
    """Direct preference optimisation: the SFT options that apply, preference data and `dpo.*`."""

    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    dpo: DPOOptions = field(default_factory=DPOOptions)
    default_lr: ClassVar[dict[str, float]] = POLICY_DEFAULT_LR

    def validate(self) -> None:
        super().validate()
        if not self.dpo.beta > 0:
            raise ConfigError("dpo.beta: must be > 0")
        if self.dpo.sft_weight < 0:
            raise ConfigError("dpo.sft_weight: must be >= 0")


@dataclass
class RewardConfig(SFTConfig):
    """A reward model: the SFT options that apply, on preference data; a scalar head on the base."""

    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)

    def validate(self) -> None:
        super().validate()
        f = self.forgetting
        if f.every or f.max_kl is not None or f.max_probe_ppl_increase is not None:
            raise ConfigError("forgetting: a reward model does not generate, so its drift is not measured on the "
                              "probe; the forgetting guard applies to sft, dpo, ppo and grpo")


@dataclass
class PromptDataConfig:
    train: str | None = opt(None, "--prompts", "prompts, JSONL: `messages` ending with a user turn, or `prompt`; "
                            "other fields (e.g. `reference`) reach the reward functions")
    eval: str | None = opt(None, "--eval-prompts", "held-out prompts: greedy replies scored before and after")
    max_prompt_length: int = opt(256, "--max-prompt-length", "longer prompts keep their last tokens")


@dataclass
class GRPOOptions:
    reward: str = opt("", "--reward", "reward functions: json_valid, json_fields, json_schema:PATH, regex:PATTERN, exact_match, "
                      "length_penalty[:N], module:function; comma-separated")
    reward_model: str | None = opt(None, "--reward-model", "a `tunesmith reward` run whose score is added to the reward")
    group_size: int = opt(4, "--group-size", "completions sampled per prompt (K)")
    kl_coef: float = opt(0.04, "--kl-coef", "weight of the KL to the frozen base (0: no reference pass)")
    clip_range: float = opt(0.2, "--clip-range", "PPO clip range ε of the policy ratio")
    epochs_per_step: int = opt(1, "--epochs-per-step", "optimisation passes over each batch of samples")
    temperature: float = opt(1.0, "--temperature", "sampling temperature")
    top_p: float = opt(1.0, "--top-p", "nucleus sampling")
    max_new_tokens: int = opt(64, "--max-new-tokens", "tokens per sampled completion")
    samples_every: int = opt(5, "--samples-every", "write a few sampled completions to samples.jsonl every N steps")


@dataclass
class GRPOConfig(SFTConfig):
    """Group relative policy optimisation: K samples per prompt, group-normalised rewards, KL to the base."""

    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    grpo: GRPOOptions = field(default_factory=GRPOOptions)
    default_lr: ClassVar[dict[str, float]] = POLICY_DEFAULT_LR

    def validate(self) -> None:
        if self.data.train is None:
            raise ConfigError("data.train: no prompts given (use --prompts FILE)")
        super().validate()
        g = self.grpo
        if not g.reward and not g.reward_model:
            raise ConfigError("grpo.reward: no reward given (use --reward NAME[,NAME...] and/or --reward-model DIR)")
        if self.method == "full" and g.kl_coef > 0:
            raise ConfigError("method full: the reference is the base with the adapter switched off; full "
                              "fine-tuning has none, so use --method lora/qlora or --kl-coef 0")
        checks = [(g.group_size >= 2, "grpo.group_size", "must be >= 2 (advantages compare samples of one prompt)"),
                  (g.kl_coef >= 0, "grpo.kl_coef", "must be >= 0"), (g.clip_range > 0, "grpo.clip_range", "must be > 0"),
                  (g.epochs_per_step >= 1, "grpo.epochs_per_step", "must be >= 1"),
                  (g.temperature > 0, "grpo.temperature", "must be > 0 (sampling)"),
                  (0 < g.top_p <= 1, "grpo.top_p", "must be in (0, 1]"),
                  (g.max_new_tokens >= 1, "grpo.max_new_tokens", "must be >= 1"),
                  (self.data.max_prompt_length >= 8, "data.max_prompt_length", "must be >= 8"),
                  (not self.train.compile, "train.compile", NO_COMPILE_WITH_SAMPLING)]
        require(checks)


# Sampling runs the same layers with a growing KV cache, one new length per token: compiled layers would
# recompile (or fall back) all the time. The recipes that sample train eagerly.
NO_COMPILE_WITH_SAMPLING = "not with a recipe that samples (grpo, ppo); use it with sft, dpo or reward"


@dataclass
class PPOOptions:
    reward_model: str | None = opt(None, "--reward-model", "a `tunesmith reward` run (lora/qlora on the same base)")
    rollouts_per_step: int = opt(8, "--rollouts-per-step", "prompts sampled (one completion each) per step")
    ppo_epochs: int = opt(4, "--ppo-epochs", "optimisation passes over each batch of rollouts")
    kl_coef: float = opt(0.05, "--kl-coef", "per-token KL penalty to the frozen base (initial value if --kl-target)")
    kl_target: float | None = opt(None, "--kl-target", "adapt kl_coef so the per-sequence KL tracks this (Ziegler et al.)")
    kl_horizon: float = opt(10000.0, "--kl-horizon", "rollouts over which the adaptive coefficient reacts")
    gamma: float = opt(1.0, "--gamma", "discount")
    lam: float = opt(0.95, "--lam", "GAE lambda")
    clip_range: float = opt(0.2, "--clip-range", "policy ratio clip ε")
    clip_range_value: float = opt(0.2, "--clip-range-value", "value clip ε")
    vf_coef: float = opt(0.1, "--vf-coef", "weight of the value loss")
    whiten_advantages: bool = opt(True, "--whiten-advantages", "normalise advantages over the batch")
    temperature: float = opt(1.0, "--temperature", "sampling temperature")
    top_p: float = opt(1.0, "--top-p", "nucleus sampling")
    max_new_tokens: int = opt(64, "--max-new-tokens", "tokens per sampled completion")
    samples_every: int = opt(5, "--samples-every", "write a few rollouts to samples.jsonl every N steps")


@dataclass
class PPOConfig(SFTConfig):
    """PPO against a reward model; policy, value head, reference and reward share one copy of the base."""

    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    ppo: PPOOptions = field(default_factory=PPOOptions)
    default_lr: ClassVar[dict[str, float]] = POLICY_DEFAULT_LR

    def validate(self) -> None:
        if self.data.train is None:
            raise ConfigError("data.train: no prompts given (use --prompts FILE)")
        if not self.ppo.reward_model:
            raise ConfigError("ppo.reward_model: no reward model given (use --reward-model DIR from `tunesmith reward`)")
        if self.method == "full":
            raise ConfigError("method full: PPO's reference is the base with the adapter switched off; "
                              "use --method lora or qlora")
        self.train.batch_size = self.ppo.rollouts_per_step  # one optimizer batch = one batch of rollouts
        super().validate()
        o = self.ppo
        checks = [(o.rollouts_per_step >= 2, "ppo.rollouts_per_step", "must be >= 2 (advantages are whitened)"),
                  (o.ppo_epochs >= 1, "ppo.ppo_epochs", "must be >= 1"), (o.kl_coef >= 0, "ppo.kl_coef", "must be >= 0"),
                  (o.kl_target is None or o.kl_target > 0, "ppo.kl_target", "must be > 0"),
                  (0 < o.gamma <= 1 and 0 <= o.lam <= 1, "ppo.gamma/lam", "gamma in (0, 1], lam in [0, 1]"),
                  (o.clip_range > 0 and o.clip_range_value > 0, "ppo.clip_range", "must be > 0"),
                  (o.temperature > 0, "ppo.temperature", "must be > 0"), (0 < o.top_p <= 1, "ppo.top_p", "in (0, 1]"),
                  (o.max_new_tokens >= 1, "ppo.max_new_tokens", "must be >= 1"),
                  (not self.train.compile, "train.compile", NO_COMPILE_WITH_SAMPLING)]
        require(checks)
