"""DPO throughput and peak memory: tunesmith vs TRL's DPOTrainer + PEFT, side by side.

Run from the repository root (CPU, several minutes):

    PYTHONPATH=src python bench/dpo_vs_trl.py [--steps 6] [--warmup-steps 1] [--model DIR] [--data FILE]
                                              [--max-length 128]

Needs `trl` (pip install "trl==1.16.0", check with --dry-run that it keeps your torch). Both sides train
SmolLM2-135M-Instruct with LoRA r=16, alpha=32, dropout 0 on all linear layers of the blocks (TRL's DPO default), 8 preference pairs
per optimizer step (no accumulation), max length 128 (--max-length) per sequence (prompt+completion, truncated), fp32, AdamW
lr 5e-5, standard (sigmoid) DPO loss with beta 0.1, the reference being the same model with the adapter disabled
(no second model copy, reference log-probs computed each step), on the first steps*8 usable pairs of the data in
file order (pairs whose prompt alone fills 128 tokens, or whose chosen and rejected replies are identical, are
skipped: one side or the other would drop them). Step k trains the same 8 pairs on both sides (TRL: sequential
sampler; tunesmith, which always shuffles with its seed: rows laid out so that its order is the file order). Each
side runs in its own fresh subprocess, which reports its peak RSS (ru_maxrss). pairs/s = pairs of the timed steps /
their wall seconds; tokens/s = non-padding tokens of the timed steps (prompt+chosen and prompt+rejected, each with
the model's chat template and truncated to 128 tokens; counted once here) / the same seconds (TRL: a TrainerCallback
from on_step_begin to on_step_end; tunesmith: `step_s` in its metrics.jsonl). tunesmith runs in its default
layout (the pairs in one row, each prompt computed once: fewer tokens computed than counted here) and, in an extra row
with each of the --extra flags (default --packing; bench/run.py asks for --compile). Prints a table and writes bench/results/dpo_vs_trl-<date>-<host>.json (see --results-dir).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

from harness import (
    ROOT,
    add_ratios,
    child_env,
    child_side,
    count_batches,
    default_model_dir,
    emit,
    first_usable,
    peft_lora,
    print_table,
    row,
    run_side,
    side_by_side_parser,
    side_by_side_result,
    step_timer,
    tunesmith_data,
    tunesmith_row,
    tunesmith_variants,
    versions,
    write_jsonl,
    write_result,
)

BATCH, LR, BETA, LORA = 8, 5e-5, 0.1, dict(r=16, alpha=32, dropout=0.0)
MAX_LEN = 128  # --max-length


def trl_config_kwargs(out: str, steps: int, seed: int) -> dict:
    """DPOConfig arguments (TRL 1.16): everything that differs from the defaults, or matters, spelled out."""
    return dict(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        max_length=MAX_LEN,
        truncation_mode="keep_start",
        padding_free=False,
        loss_type=["sigmoid"],
        beta=BETA,
        precompute_ref_log_probs=False,
        sync_ref_model=False,
        disable_dropout=True,  # TRL's default: every dropout 0, as tunesmith's default LoRA dropout
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # TRL defaults both to True
        train_sampling_strategy="sequential",
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=True,
    )


def child_trl(a: argparse.Namespace) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train")
    step_s = []
    cfg = DPOConfig(**trl_config_kwargs(a.out, a.steps, a.seed))
    peft_cfg = peft_lora(LORA)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_cfg,
        callbacks=[step_timer(step_s)],
    )
    batch_tokens, batch_pairs = count_batches(trainer)  # tokens of the chosen and rejected sequences
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lora_p = [m.p for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
    emit(
        dict(
            step_s=step_s,
            batch_tokens=batch_tokens[: a.steps],
            batch_pairs=batch_pairs[: a.steps],
            losses=[h["loss"] for h in logs],
            reward_accuracies=[h.get("rewards/accuracies") for h in logs],
            rows_after_prep=len(trainer.train_dataset),
            threads=torch.get_num_threads(),
            ref_model_loaded=trainer.ref_model is not None,
            precompute_ref_log_probs=trainer.precompute_ref_logps,
            gradient_checkpointing=bool(getattr(trainer.model.get_base_model(), "is_gradient_checkpointing", False)),
            lora_dropout_p=sorted(set(lora_p)),
            trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        )
    )


def tunesmith_argv(model, data, steps, seed, out, flags=()) -> list[str]:
    """`tunesmith dpo` with the shared settings and tunesmith's defaults for the rest, plus `flags`."""
    return [
        "dpo",
        "--model",
        model,
        "--data",
        data,
        "--method",
        "lora",
        "--lora-r",
        str(LORA["r"]),
        "--lora-alpha",
        str(LORA["alpha"]),
        "--lora-dropout",
        str(LORA["dropout"]),
        "--target",
        "all-linear",
        "--batch-size",
        str(BATCH),
        "--micro-batch-size",
        str(BATCH),
        "--max-length",
        str(MAX_LEN),
        "--precision",
        "fp32",
        "--lr",
        str(LR),
        "--beta",
        str(BETA),
        "--loss",
        "dpo",
        "--max-steps",
        str(steps),
        "--seed",
        str(seed),
        "--log-every",
        "1",
        "--save-every",
        "0",
        "--out",
        out,
        "--overwrite",
        *flags,
    ]


def tunesmith_preflight(model: str, data: str) -> str | None:
    """Why the tunesmith side can't run (no `dpo` command, or options it doesn't take), or None. Cheap: it only
    parses the command lines the bench will run (no `--help`, whose formatting can fail on its own)."""
    code = (
        "import json, sys; from tunesmith.cli import build_parser\n"
        "for argv in json.loads(sys.argv[1]): build_parser().parse_args(argv)"
    )
    argvs = [
        tunesmith_argv(model, data, 2, 0, os.path.join(tempfile.gettempdir(), "dpo_vs_trl-preflight"), flags)
        for flags in ([], ["--packing"], ["--compile"])
    ]
    p = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True, env=child_env())
    return (
        None
        if p.returncode == 0
        else f"tunesmith can't parse `dpo ...` (rc {p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}"
    )


def pair_row(name: str, a, data: str, tmp: str, flags: list[str], step_tokens: list[int]) -> dict:
    """A tunesmith row, with the pairs it reports and how many of the harness's tokens it computed."""
    packing = "--packing" in flags
    r, recs = tunesmith_row(
        __file__, "dpo", name, a, data, tmp, flags, step_tokens, pairs_per_step=BATCH, shares_prompt=not packing
    )
    own, pairs = r["tunesmith_reported_tokens"], [x.get("pairs") for x in recs]
    r.update(
        tunesmith_reported_pairs=pairs,
        tokens_computed_share=sum(own) / sum(step_tokens),
        pairs_match=pairs == [BATCH] * a.steps,
    )
    if not packing:  # each prompt computed once: fewer tokens go through the model than counted, never more
        r["tokens_match_harness"] = all(o <= t for o, t in zip(own, step_tokens))
    return r


def conversational(r: dict) -> dict:
    """One preference row (prompt/chosen/rejected with strings or messages, or OpenAI's preference format) as TRL's
    conversational {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}."""
    if "input" in r:
        r = dict(prompt=r["input"]["messages"], chosen=r["preferred_output"], rejected=r["non_preferred_output"])
    as_msgs = lambda v, role: (
        [{"role": role, "content": v}]
        if isinstance(v, str)
        else [{"role": m["role"], "content": m["content"]} for m in v]
    )
    return dict(
        prompt=as_msgs(r["prompt"], "user"),
        chosen=as_msgs(r["chosen"], "assistant"),
        rejected=as_msgs(r["rejected"], "assistant"),
    )


def pair_tokens(tok, c: dict) -> tuple[int, int, int] | None:
    """(prompt, prompt+chosen, prompt+rejected) token counts as TRL tokenizes them (the prompt ends where the
    tokenized prompt and prompt+completion diverge), or None if the pair is unusable: identical replies (tunesmith
    drops those) or a prompt that fills MAX_LEN (TRL drops those: no completion token left after truncation)."""
    if c["chosen"] == c["rejected"]:
        return None
    ids = lambda msgs, **kw: tok.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]
    p, pc, pr = (
        ids(c["prompt"], add_generation_prompt=True),
        ids(c["prompt"] + c["chosen"]),
        ids(c["prompt"] + c["rejected"]),
    )
    common = lambda x, y: next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
    n = min(common(p, pc), common(p, pr))
    return (n, len(pc), len(pr)) if n < MAX_LEN else None


def main() -> None:
    ap = side_by_side_parser(
        __doc__,
        str(ROOT / "src/tunesmith/demo/data/tone_train.jsonl"),
        "--packing",
        "comma-separated tunesmith flags, each adding a row that runs tunesmith with it "
        "(default --packing: the 2n sequences packed into rows; '' for none)",
    )
    a = ap.parse_args()
    global MAX_LEN
    MAX_LEN = a.max_length
    if a.child:
        return child_side(a, child_trl, tunesmith_argv)
    assert a.steps > a.warmup_steps >= 0, "--steps must exceed --warmup-steps"
    a.model = a.model or default_model_dir()
    if not a.skip_tunesmith and (why := tunesmith_preflight(a.model, a.data)):
        sys.exit(f"{why}\n(run the TRL side alone with --skip-tunesmith)")

    vers = versions()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)

    def measure(r: dict) -> tuple[dict, tuple[int, int, int]] | None:
        c = conversational(r)
        n = pair_tokens(tok, c)
        return None if n is None else (c, n)

    rows, measured, skipped = first_usable(a.data, a.steps * BATCH, measure, "pairs")
    convs, lens = [c for c, _ in measured], [n for _, n in measured]
    pair_tok = [min(pc, MAX_LEN) + min(pr, MAX_LEN) for _, pc, pr in lens]
    step_tokens = [sum(pair_tok[i * BATCH : (i + 1) * BATCH]) for i in range(a.steps)]
    truncated = sum((pc > MAX_LEN) + (pr > MAX_LEN) for _, pc, pr in lens)
    w = a.warmup_steps
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl-") as tmp:
        trl_data = os.path.join(tmp, "train_trl.jsonl")
        write_jsonl(trl_data, convs)
        res, wall = run_side(__file__, "trl", a, trl_data, os.path.join(tmp, "trl"))
        notes = []
        if skipped:
            notes.append(
                f"skipped {skipped} pair(s) whose prompt fills {MAX_LEN} tokens or whose replies are "
                "identical (one side would drop them); trained the next usable pairs instead"
            )
        if (
            res["batch_tokens"] != step_tokens
            or res["batch_pairs"] != [BATCH] * a.steps
            or res["rows_after_prep"] != len(rows)
        ):
            notes.append(
                f"TRL trained different pairs/tokens per step than the harness counted: "
                f"{res['batch_pairs']} pairs, {res['batch_tokens']} tokens"
            )
        if res["ref_model_loaded"] or res["precompute_ref_log_probs"] or res["gradient_checkpointing"]:
            notes.append(
                f"TRL setup differs from the intended one: ref_model_loaded={res['ref_model_loaded']}, "
                f"precompute_ref_log_probs={res['precompute_ref_log_probs']}, "
                f"gradient_checkpointing={res['gradient_checkpointing']}"
            )
        if res["losses"] and abs(res["losses"][0] - math.log(2)) > 1e-3:
            notes.append(
                f"TRL's first loss is {res['losses'][0]:.4f}, not ln 2 = 0.6931 (policy != reference at step 0?)"
            )
        table = [
            row(
                "trl",
                res["step_s"],
                step_tokens,
                w,
                res["maxrss_kib"],
                pairs_per_step=BATCH,
                child_wall_s=wall,
                **{k: v for k, v in res.items() if k not in ("step_s", "maxrss_kib")},
            )
        ]
        if not a.skip_tunesmith:
            ts_data = tunesmith_data(rows, a.seed, BATCH, tmp, notes)
            for name, flags in tunesmith_variants(a.extra):
                r = pair_row(name, a, ts_data, tmp, flags, step_tokens)
                packing = "--packing" in flags
                table.append(r)
                if not packing:
                    notes.append(
                        f"{name}: each pair's prompt computed once: "
                        f"{r['tokens_computed_share']:.0%} of the sequence tokens went through the model"
                    )
                if not r["tokens_match_harness"] or not r["pairs_match"]:
                    notes.append(
                        f"{name} trained different pairs/tokens per step than the harness counted: "
                        f"{r['tunesmith_reported_pairs']} pairs, {r['tunesmith_reported_tokens']} tokens"
                    )
    add_ratios(table, "pairs_per_s", notes)
    print_table(table, 18, "pairs_per_s")
    print("TRL losses (first steps):", ", ".join(f"{x:.4f}" for x in res["losses"][:3]))
    for n in notes:
        print("note:", n)
    result = side_by_side_result(
        "dpo_vs_trl",
        vers,
        table=table,
        speed="pairs_per_s",
        notes=notes,
        settings=dict(
            model=a.model,
            data=a.data,
            pairs=len(rows),
            steps=a.steps,
            warmup_steps=w,
            seed=a.seed,
            pairs_per_step=BATCH,
            grad_accum=1,
            max_length=MAX_LEN,
            precision="fp32",
            device="cpu",
            lr=LR,
            optimizer="AdamW",
            beta=BETA,
            loss="sigmoid (standard DPO)",
            reference="same model, adapter disabled",
            lora=dict(LORA, target_modules="all-linear"),
            packing=False,
            sequences_truncated=truncated,
            trl_dpo_config=trl_config_kwargs("OUT", a.steps, a.seed),
            tunesmith_argv=tunesmith_argv(a.model, "DATA", a.steps, a.seed, "OUT"),
        ),
        harness_step_tokens=step_tokens,
        pairs_skipped=skipped,
        # per pair: prompt, prompt+chosen and prompt+rejected tokens, truncated (the model FLOPs of MFU: bench/run.py)
        examples=[dict(prompt=n, chosen=min(pc, MAX_LEN), rejected=min(pr, MAX_LEN)) for n, pc, pr in lens],
        trl_first_losses=res["losses"][:3],
    )
    write_result(result, a.results_dir)


if __name__ == "__main__":
    main()
