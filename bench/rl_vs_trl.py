"""GRPO throughput (completions/s, s/step and where a step's time goes) and peak memory: tunesmith vs TRL's GRPOTrainer.

Run from the repository root (about 5-10 min on 2 CPU cores):

    PYTHONPATH=src python bench/rl_vs_trl.py [--steps 6] [--warmup-steps 1] [--max-new-tokens 64]

Both sides train a LoRA adapter (r16, alpha 32, dropout 0, all linear layers) on SmolLM2-135M-Instruct with GRPO:
the GRPO demo's extraction prompts (`tunesmith.demo.grpo.write_prompts`, the first steps*4 of its training
messages), 4 prompts per step x K = 4 completions sampled at temperature 0.7 (top-p 1) of at most
--max-new-tokens tokens, one reward (tunesmith's `json_valid`: 1.0 if the completion is exactly one JSON
object; the TRL side calls the same function), advantages normalised within each prompt's group, loss type
"grpo" (the mean of per-completion token means), KL coefficient 0.04 to the base (the reference = the model with
its adapter disabled), clip 0.2, one policy update per step, AdamW lr 3e-4 with a cosine schedule and no
warm-up, gradient-norm clipping at 1, fp32 on the CPU, no vLLM (TRL samples with transformers' `generate`). Step k
uses the same 4 prompts on both sides (TRL: `shuffle_dataset=False`; tunesmith, which always draws its prompts in
a seeded order: its copy of the file laid out with `tunesmith.train.order.step_indices`); what is sampled
differs (each side's own random draws), so the results file keeps each side's completion lengths and rewards.

Each side runs in a fresh subprocess, which reports its peak RSS (ru_maxrss: imports, model load and training).
tunesmith runs `tunesmith grpo` through `tunesmith.cli.main` in that process; TRL builds a `GRPOTrainer` with a
PEFT `LoraConfig`. Step time: tunesmith's `step_s` in metrics.jsonl (its begin_step to end_step); TRL's from a
TrainerCallback (on_step_begin to on_step_end, which encloses generation, scoring and the update). Inside each
step the child wraps, without changing either library's code, the same three stages on both sides:
  sampling   tunesmith `sample_prompts` (chat template, tokenizing, `sample_completions`: generate with each
             prompt pre-filled once); TRL `_generate_single_turn` (transformers `generate` on the left-padded
             prompts repeated K times, the end-of-turn cut)
  rewards    tunesmith `Scorer.__call__`; TRL `_calculate_rewards`
  reference  the log-prob passes run without gradient (the reference, adapter off; no old-policy pass on
             either side with one update per step): tunesmith `batch_token_logps`, TRL
             `_get_per_token_logps_and_entropies`, each when called under no_grad
  update     the rest of the step: the policy's forward and backward, clipping, AdamW, and each side's
             bookkeeping (decoding, batching, advantages, logging)
completions/s = 16 x timed steps / their seconds. The first --warmup-steps steps are not timed. Prints a table
with the ratios (tunesmith / TRL) and writes bench/results/rl_vs_trl-<date>-<host>.json (see --results-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from harness import (
    ROOT,
    default_model_dir,
    emit,
    peft_lora,
    run_child,
    side_by_side_result,
    stage_timer,
    step_timer,
    tunesmith_layout,
    versions,
    write_jsonl,
    write_result,
)

PROMPTS, K, LR, KL_COEF, CLIP, TEMPERATURE = 4, 4, 3e-4, 0.04, 0.2, 0.7
LORA = dict(r=16, alpha=32, dropout=0.0)
STAGES = ("sampling", "rewards", "reference")


def no_grad_stage():
    import torch

    return None if torch.is_grad_enabled() else "reference"


def child_tunesmith(a: argparse.Namespace) -> None:
    """`tunesmith grpo` in this process, its stages timed: exit code, per-step stage seconds, peak RSS."""
    import torch

    import tunesmith.recipes.grpo as recipe
    from tunesmith.cli import main
    from tunesmith.train.run import Run

    stages: list[dict] = []
    begin_step = Run.begin_step

    def begin(self):
        stages.append(dict.fromkeys(STAGES, 0.0))
        return begin_step(self)

    Run.begin_step = begin
    recipe.sample_prompts = stage_timer(stages, recipe.sample_prompts, "sampling")
    recipe.Scorer.__call__ = stage_timer(stages, recipe.Scorer.__call__, "rewards")
    recipe.batch_token_logps = stage_timer(stages, recipe.batch_token_logps, no_grad_stage)
    rc = main(tunesmith_argv(a.model, a.data, a.steps, a.seed, a.max_new_tokens, a.out))
    emit(dict(rc=rc, stages=stages, threads=torch.get_num_threads()))


def tunesmith_argv(model, data, steps, seed, max_new_tokens, out) -> list[str]:
    """`tunesmith grpo` with the shared settings spelled out."""
    flags = dict(
        model=model,
        prompts=data,
        method="lora",
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target="all-linear",
        reward="json_valid",
        group_size=K,
        kl_coef=KL_COEF,
        clip_range=CLIP,
        loss_type="grpo",
        epochs_per_step=1,
        temperature=TEMPERATURE,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        max_prompt_length=256,
        batch_size=PROMPTS,
        micro_batch_size=PROMPTS,
        lr=LR,
        schedule="cosine",
        warmup_ratio=0,
        weight_decay=0,
        max_grad_norm=1.0,
        precision="fp32",
        device="cpu",
        max_steps=steps,
        seed=seed,
        log_every=1,
        save_every=0,
        out=out,
    )
    argv = ["grpo"] + [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return argv + ["--overwrite", "--no-progress"]


def trl_config_kwargs(out: str, steps: int, seed: int, max_new_tokens: int) -> dict:
    """GRPOConfig arguments (TRL 1.16): everything that differs from the defaults, or matters, spelled out."""
    return dict(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=PROMPTS * K,  # completions per step: 4 prompts x K
        gradient_accumulation_steps=1,
        num_generations=K,
        steps_per_generation=1,
        num_iterations=1,  # one policy update per batch of samples: no old-policy pass
        max_completion_length=max_new_tokens,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        beta=KL_COEF,  # TRL's default is 0 (no reference pass)
        epsilon=CLIP,
        loss_type="grpo",  # TRL's default is dapo
        scale_rewards="group",
        importance_sampling_level="token",
        mask_truncated_completions=False,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        shuffle_dataset=False,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # TRL defaults both to True
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        log_completions=False,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=True,
    )


def child_trl(a: argparse.Namespace) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunesmith.rollout.rewards import json_valid

    def json_valid_reward(prompts, completions, **kw) -> list[float]:
        """tunesmith's json_valid on each completion's text (conversational: the assistant message)."""
        return [json_valid(p, c[0]["content"] if isinstance(c, list) else c, {}) for p, c in zip(prompts, completions)]

    tok = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train")
    step_s: list[float] = []
    stages: list[dict] = []
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[json_valid_reward],
        args=GRPOConfig(**trl_config_kwargs(a.out, a.steps, a.seed, a.max_new_tokens)),
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_lora(LORA),
        callbacks=[step_timer(step_s)],
    )

    class Stages(TrainerCallback):  # a new entry of stage seconds per step
        def on_step_begin(self, args, state, control, **kw):
            stages.append(dict.fromkeys(STAGES, 0.0))

    trainer.add_callback(Stages())
    trainer._generate_single_turn = stage_timer(stages, trainer._generate_single_turn, "sampling")
    trainer._calculate_rewards = stage_timer(stages, trainer._calculate_rewards, "rewards")
    trainer._get_per_token_logps_and_entropies = stage_timer(
        stages, trainer._get_per_token_logps_and_entropies, no_grad_stage
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    emit(
        dict(
            step_s=step_s,
            stages=stages,
            completion_length=[h["completions/mean_length"] for h in logs],
            reward_mean=[h.get("reward") for h in logs],
            kl=[h.get("kl") for h in logs],
            threads=torch.get_num_threads(),
            ref_model_loaded=trainer.ref_model is not None,
            gradient_checkpointing=bool(getattr(trainer.model.get_base_model(), "is_gradient_checkpointing", False)),
            trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        )
    )


def side_row(name: str, step_s: list[float], stages: list[dict], w: int, maxrss_kib: int, **extra) -> dict:
    """A side's row: completions/s over the timed steps, the mean seconds of each stage, peak RSS."""
    timed, st = step_s[w:], stages[w : len(step_s)]
    secs = sum(timed)
    mean = {s: sum(x[s] for x in st) / len(st) for s in STAGES}
    return dict(
        side=name,
        steps_timed=len(timed),
        completions_per_s=PROMPTS * K * len(timed) / secs,
        s_per_step=secs / len(timed),
        s_per_step_median=sorted(timed)[len(timed) // 2],
        **{f"{s}_s": v for s, v in mean.items()},
        update_s=secs / len(timed) - sum(mean.values()),
        peak_rss_mb=maxrss_kib / 1024,
        step_s=step_s,
        stages=stages,
        **extra,
    )


COLUMNS = [
    ("steps", "steps_timed", 5, ""),
    ("compl/s", "completions_per_s", 7, ".2f"),
    ("s/step", "s_per_step", 6, ".2f"),
    ("sample", "sampling_s", 6, ".2f"),
    ("reward", "rewards_s", 6, ".3f"),
    ("ref", "reference_s", 5, ".2f"),
    ("update", "update_s", 6, ".2f"),
    ("compl tok", "completion_length_mean", 9, ".1f"),
    ("RSS MB", "peak_rss_mb", 6, ".0f"),
    ("ratio compl/s", "completions_per_s_ratio", 13, ".2f"),
    ("ratio RSS", "peak_rss_ratio", 9, ".2f"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", help="HF model directory (default: tunesmith's smollm2-135m-instruct)")
    ap.add_argument("--results-dir", default=str(ROOT / "bench/results"), help="where the results JSON goes")
    ap.add_argument("--child", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return (child_trl if a.child == "trl" else child_tunesmith)(a)
    assert a.steps > a.warmup_steps >= 0, "--steps must exceed --warmup-steps"
    a.model = a.model or default_model_dir()
    vers = versions()
    from tunesmith.demo.grpo import write_prompts
    from tunesmith.demo.run import TRAIN_FILE
    from tunesmith.train.metrics import read_metrics

    w, notes, table = a.warmup_steps, [], []
    with tempfile.TemporaryDirectory(prefix="rl_vs_trl-") as tmp:
        prompts = Path(tmp, "prompts.jsonl")
        write_prompts(TRAIN_FILE, prompts, a.steps * PROMPTS)
        rows = [json.loads(line) for line in prompts.read_text().splitlines()]
        trl_data, ts_data = os.path.join(tmp, "trl.jsonl"), os.path.join(tmp, "tunesmith.jsonl")
        write_jsonl(trl_data, [{"prompt": r["messages"]} for r in rows])
        laid = tunesmith_layout(rows, a.seed, PROMPTS)
        if laid is None:
            laid = rows
            notes.append("could not align tunesmith's (seeded, shuffled) prompt order with TRL's")
        write_jsonl(ts_data, laid)

        def child(side: str, data: str) -> tuple[dict, float, str]:
            out = os.path.join(tmp, side)
            cmd = [sys.executable, __file__, "--child", side, "--model", a.model, "--data", data, "--out", out]
            cmd += ["--steps", str(a.steps), "--seed", str(a.seed), "--max-new-tokens", str(a.max_new_tokens)]
            res, wall = run_child(cmd, f"{side} child")
            return res, wall, out

        res, wall, _ = child("trl", trl_data)
        lengths = res.pop("completion_length")
        table.append(
            side_row(
                "trl",
                res.pop("step_s"),
                res.pop("stages"),
                w,
                res.pop("maxrss_kib"),
                completion_length=lengths,
                completion_length_mean=sum(lengths[w:]) / len(lengths[w:]),
                child_wall_s=wall,
                **res,
            )
        )
        if res["ref_model_loaded"] or res["gradient_checkpointing"]:
            notes.append(
                f"TRL setup differs from the intended one: ref_model_loaded={res['ref_model_loaded']}, "
                f"gradient_checkpointing={res['gradient_checkpointing']}"
            )
        res, wall, out = child("tunesmith", ts_data)
        if res["rc"] != 0:
            sys.exit(f"tunesmith grpo exited {res['rc']}")
        recs = [r for r in read_metrics(Path(out, "metrics.jsonl")) if "step_s" in r and "reward_mean" in r]
        lengths = [r["response_length"] for r in recs]
        table.append(
            side_row(
                "tunesmith",
                [r["step_s"] for r in recs],
                res["stages"],
                w,
                res["maxrss_kib"],
                completion_length=lengths,
                completion_length_mean=sum(lengths[w:]) / len(lengths[w:]),
                reward_mean=[r["reward_mean"] for r in recs],
                kl=[r.get("kl") for r in recs],
                child_wall_s=wall,
                threads=res["threads"],
            )
        )
    for r in table:
        r["completions_per_s_ratio"] = r["completions_per_s"] / table[0]["completions_per_s"]
        r["peak_rss_ratio"] = r["peak_rss_mb"] / table[0]["peak_rss_mb"]
        if max(r["step_s"][w:]) > 1.5 * min(r["step_s"][w:]):
            notes.append(f"{r['side']}: slowest timed step over 1.5x the fastest (completion lengths vary; busy?)")
    trl_len, ts_len = (r["completion_length_mean"] for r in table)
    if abs(ts_len - trl_len) > 0.15 * trl_len:
        notes.append(
            f"mean completion length differs: tunesmith {ts_len:.1f} vs TRL {trl_len:.1f} tokens "
            "(each side's own samples): the sampling work differs too"
        )
    print("\n" + " ".join([f"{'side':<9}"] + [f"{t:>{n}}" for t, _, n, _ in COLUMNS]))
    for r in table:
        print(" ".join([f"{r['side']:<9}"] + [f"{r[k]:>{n}{f}}" for _, k, n, f in COLUMNS]))
    print("(seconds per timed step: sample / reward / ref = no-grad log-probs / update = the rest; compl tok: mean)")
    for n in notes:
        print("note:", n)
    result = side_by_side_result(
        "rl_vs_trl",
        vers,
        table=table,
        speed="completions_per_s",
        notes=notes,
        settings=dict(
            model=a.model,
            prompts=f"tunesmith.demo.grpo.write_prompts(TRAIN_FILE, path, {len(rows)})",
            steps=a.steps,
            warmup_steps=w,
            seed=a.seed,
            prompts_per_step=PROMPTS,
            completions_per_prompt=K,
            max_new_tokens=a.max_new_tokens,
            temperature=TEMPERATURE,
            top_p=1.0,
            reward="json_valid (tunesmith.rollout.rewards.json_valid on both sides)",
            loss_type="grpo",
            kl_coef=KL_COEF,
            clip=CLIP,
            updates_per_step=1,
            reference="same model, adapter disabled",
            lr=LR,
            precision="fp32",
            device="cpu",
            lora=dict(LORA, target_modules="all-linear"),
            trl_grpo_config=trl_config_kwargs("OUT", a.steps, a.seed, a.max_new_tokens),
            tunesmith_argv=tunesmith_argv(a.model, "DATA", a.steps, a.seed, a.max_new_tokens, "OUT"),
        ),
        stage_definitions=dict(
            sampling="tunesmith recipes.grpo.sample_prompts; TRL GRPOTrainer._generate_single_turn",
            rewards="tunesmith Scorer.__call__; TRL GRPOTrainer._calculate_rewards",
            reference="no-grad log-prob passes: tunesmith batch_token_logps; TRL _get_per_token_logps_and_entropies",
            update="step time less the three: policy forward + backward, clip, AdamW, bookkeeping",
        ),
    )
    write_result(result, a.results_dir)


if __name__ == "__main__":
    main()
