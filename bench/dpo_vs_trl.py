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
layout (one row per pair, the prompt computed once: fewer tokens computed than counted here) and, in an extra row
with each of the --extra flags (default --packing; bench/run.py asks for --compile). Prints a table and writes bench/results/dpo_vs_trl-<date>-<host>.json (see --results-dir).
"""
from __future__ import annotations

import argparse, datetime, json, math, os, platform, resource, socket, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, LR, BETA, LORA = 8, 5e-5, 0.1, dict(r=16, alpha=32, dropout=0.0)
MAX_LEN = 128  # --max-length


def emit(obj: dict) -> None:
    """Child side: peak RSS of this process, then one JSON line, the last on stdout."""
    obj["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(obj), flush=True)


def trl_config_kwargs(out: str, steps: int, seed: int) -> dict:
    """DPOConfig arguments (TRL 1.16): everything that differs from the defaults, or matters, spelled out."""
    return dict(
        output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, optim="adamw_torch", max_grad_norm=1.0,
        max_length=MAX_LEN, truncation_mode="keep_start", padding_free=False,
        loss_type=["sigmoid"], beta=BETA, precompute_ref_log_probs=False, sync_ref_model=False,
        disable_dropout=True,  # TRL's default: every dropout 0, as tunesmith's default LoRA dropout
        bf16=False, fp16=False, gradient_checkpointing=False,  # TRL defaults both to True
        train_sampling_strategy="sequential", seed=seed, data_seed=seed,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, use_cpu=True,
    )


def child_trl(a: argparse.Namespace) -> None:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train")
    step_s, batch_tokens, batch_pairs, t0 = [], [], [], [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            t0[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - t0[0])

    cfg = DPOConfig(**trl_config_kwargs(a.out, a.steps, a.seed))
    peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules="all-linear", task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    trainer = DPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=data, processing_class=tok,
                         peft_config=peft_cfg, callbacks=[Timer()])
    collate = trainer.data_collator

    def counting_collator(examples):  # records the pairs and non-padding tokens of each batch actually trained
        batch = collate(examples)
        batch_pairs.append(len(examples))
        batch_tokens.append(int(batch["attention_mask"].sum()))  # chosen and rejected sequences
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lora_p = [m.p for n, m in trainer.model.named_modules()
              if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
    emit(dict(step_s=step_s, batch_tokens=batch_tokens[: a.steps], batch_pairs=batch_pairs[: a.steps],
              losses=[h["loss"] for h in logs],
              reward_accuracies=[h.get("rewards/accuracies") for h in logs],
              rows_after_prep=len(trainer.train_dataset), threads=torch.get_num_threads(),
              ref_model_loaded=trainer.ref_model is not None, precompute_ref_log_probs=trainer.precompute_ref_logps,
              gradient_checkpointing=bool(getattr(trainer.model.get_base_model(), "is_gradient_checkpointing", False)),
              lora_dropout_p=sorted(set(lora_p)),
              trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)))


def child_tunesmith(a: argparse.Namespace) -> None:
    import torch
    from tunesmith.cli import main

    rc = main(tunesmith_argv(a.model, a.data, a.steps, a.seed, a.out, json.loads(a.flags)))
    emit(dict(rc=rc, threads=torch.get_num_threads()))


def tunesmith_argv(model, data, steps, seed, out, flags=()) -> list[str]:
    """`tunesmith dpo` with the shared settings and tunesmith's defaults for the rest, plus `flags`."""
    return ["dpo", "--model", model, "--data", data, "--method", "lora", "--lora-r", str(LORA["r"]),
            "--lora-alpha", str(LORA["alpha"]), "--lora-dropout", str(LORA["dropout"]), "--target", "all-linear",
            "--batch-size", str(BATCH), "--micro-batch-size", str(BATCH), "--max-length", str(MAX_LEN),
            "--precision", "fp32", "--lr", str(LR), "--beta", str(BETA), "--loss", "dpo",
            "--max-steps", str(steps), "--seed", str(seed), "--log-every", "1", "--save-every", "0",
            "--out", out, "--overwrite", *flags]


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))


def tunesmith_preflight(model: str, data: str) -> str | None:
    """Why the tunesmith side can't run (no `dpo` command, or options it doesn't take), or None. Cheap: it only
    parses the command lines the bench will run (no `--help`, whose formatting can fail on its own)."""
    code = ("import json, sys; from tunesmith.cli import build_parser\n"
            "for argv in json.loads(sys.argv[1]): build_parser().parse_args(argv)")
    argvs = [tunesmith_argv(model, data, 2, 0, os.path.join(tempfile.gettempdir(), "dpo_vs_trl-preflight"), flags)
             for flags in ([], ["--packing"], ["--compile"])]
    p = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True,
                       env=child_env())
    return None if p.returncode == 0 else \
        f"tunesmith can't parse `dpo ...` (rc {p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}"


def run_child(side: str, a: argparse.Namespace, data: str, out: str, flags=()) -> tuple[dict, float]:
    cmd = [sys.executable, __file__, "--child", side, "--model", a.model, "--data", data, "--out", out,
           "--steps", str(a.steps), "--seed", str(a.seed), "--max-length", str(MAX_LEN)] + \
        ["--flags", json.dumps(list(flags))]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines or not lines[-1].startswith("{"):
        sys.exit(f"{side} child failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return json.loads(lines[-1]), wall


def row(name: str, step_s: list[float], step_tokens: list[int], w: int, maxrss_kib: int, **extra) -> dict:
    timed = sorted(step_s[w:])
    secs, toks, pairs = sum(timed), sum(step_tokens[w:]), BATCH * len(timed)
    return dict(side=name, steps_timed=len(timed), timed_pairs=pairs, timed_tokens=toks, timed_s=secs,
                pairs_per_s=pairs / secs, tokens_per_s=toks / secs, s_per_step=secs / len(timed),
                s_per_step_median=timed[len(timed) // 2], step_s_spread=timed[-1] / timed[0],
                peak_rss_mb=maxrss_kib / 1024, step_s=step_s, step_tokens=step_tokens, **extra)


def tunesmith_row(name: str, a, data: str, tmp: str, flags: list[str], step_tokens: list[int]) -> dict:
    out = os.path.join(tmp, name.replace(" ", "_"))
    packing = "--packing" in flags
    res, wall = run_child("tunesmith", a, data, out, flags)
    if res["rc"] != 0:
        sys.exit(f"tunesmith dpo exited {res['rc']}")
    recs = [json.loads(l) for l in Path(out, "metrics.jsonl").read_text().splitlines() if l.strip()]
    recs = [r for r in recs if "step_s" in r and "tokens" in r][: a.steps]
    if len(recs) < a.steps:
        sys.exit(f"{name}: {len(recs)} step records with step_s and tokens in metrics.jsonl, expected {a.steps}")
    own, pairs = [int(r["tokens"]) for r in recs], [r.get("pairs") for r in recs]
    return row(name, [float(r["step_s"]) for r in recs], step_tokens, a.warmup_steps, res["maxrss_kib"],
               tunesmith_reported_tokens=own, tunesmith_reported_pairs=pairs,
               # packed rows compute every sequence token; the default rows compute each prompt once, so
               # fewer tokens go through the model than the harness counts (never more)
               tokens_match_harness=own == step_tokens if packing else all(o <= t for o, t in zip(own, step_tokens)),
               tokens_computed_share=sum(own) / sum(step_tokens), shares_prompt=not packing,
               pairs_match=pairs == [BATCH] * a.steps,
               losses=[r.get("loss") for r in recs], child_wall_s=wall, threads=res["threads"])


def tunesmith_layout(rows: list[dict], seed: int) -> list[dict] | None:
    """tunesmith always draws each epoch in a seeded random order; lay the rows out so that its step k
    trains rows k*8 .. k*8+7 of the file order, like TRL's sequential sampler (None if it can't be done)."""
    try:
        from tunesmith.train.order import step_indices
    except ImportError:
        return None
    laid: list = [None] * len(rows)
    for k in range(len(rows) // BATCH):
        for j, pos in enumerate(step_indices(len(rows), BATCH, seed, k)):
            laid[pos] = rows[k * BATCH + j]
    return laid if all(r is not None for r in laid) else None


def conversational(r: dict) -> dict:
    """One preference row (prompt/chosen/rejected with strings or messages, or OpenAI's preference format) as TRL's
    conversational {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}."""
    if "input" in r:
        r = dict(prompt=r["input"]["messages"], chosen=r["preferred_output"], rejected=r["non_preferred_output"])
    as_msgs = lambda v, role: [{"role": role, "content": v}] if isinstance(v, str) else \
        [{"role": m["role"], "content": m["content"]} for m in v]
    return dict(prompt=as_msgs(r["prompt"], "user"), chosen=as_msgs(r["chosen"], "assistant"),
                rejected=as_msgs(r["rejected"], "assistant"))


def pair_tokens(tok, c: dict) -> tuple[int, int, int] | None:
    """(prompt, prompt+chosen, prompt+rejected) token counts as TRL tokenizes them (the prompt ends where the
    tokenized prompt and prompt+completion diverge), or None if the pair is unusable: identical replies (tunesmith
    drops those) or a prompt that fills MAX_LEN (TRL drops those: no completion token left after truncation)."""
    if c["chosen"] == c["rejected"]:
        return None
    ids = lambda msgs, **kw: tok.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]
    p, pc, pr = ids(c["prompt"], add_generation_prompt=True), ids(c["prompt"] + c["chosen"]), ids(c["prompt"] + c["rejected"])
    common = lambda x, y: next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
    n = min(common(p, pc), common(p, pr))
    return (n, len(pc), len(pr)) if n < MAX_LEN else None


def model_dir() -> str:
    code = "from tunesmith.models import resolve_model_dir; print(resolve_model_dir('smollm2-135m-instruct'))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    return p.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="HF model directory (default: tunesmith's smollm2-135m-instruct)")
    ap.add_argument("--data", default=str(ROOT / "src/tunesmith/demo/data/tone_train.jsonl"))
    ap.add_argument("--results-dir", default=str(ROOT / "bench/results"), help="where the results JSON goes")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--skip-tunesmith", action="store_true", help="run the TRL side only")
    ap.add_argument("--extra", default="--packing", help="comma-separated tunesmith flags, each adding a row that "
                    "runs tunesmith with it (default --packing: the 2n sequences packed into rows; '' for none)")
    ap.add_argument("--child", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--flags", default="[]", help=argparse.SUPPRESS)
    a = ap.parse_args()
    global MAX_LEN
    MAX_LEN = a.max_length
    if a.child:
        return child_trl(a) if a.child == "trl" else child_tunesmith(a)
    assert a.steps > a.warmup_steps >= 0, "--steps must exceed --warmup-steps"
    a.model = a.model or model_dir()
    if not a.skip_tunesmith and (why := tunesmith_preflight(a.model, a.data)):
        sys.exit(f"{why}\n(run the TRL side alone with --skip-tunesmith)")

    import peft, torch, transformers, trl
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    rows_all = [json.loads(l) for l in Path(a.data).read_text().splitlines() if l.strip()]
    rows, convs, lens, skipped = [], [], [], 0
    for r in rows_all:
        if len(rows) == a.steps * BATCH:
            break
        c = conversational(r)
        n = pair_tokens(tok, c)
        if n is None:
            skipped += 1
            continue
        rows.append(r), convs.append(c), lens.append(n)
    assert len(rows) == a.steps * BATCH, f"{a.data}: {len(rows)} usable pairs, need {a.steps * BATCH}"
    pair_tok = [min(pc, MAX_LEN) + min(pr, MAX_LEN) for _, pc, pr in lens]
    step_tokens = [sum(pair_tok[i * BATCH:(i + 1) * BATCH]) for i in range(a.steps)]
    truncated = sum((pc > MAX_LEN) + (pr > MAX_LEN) for _, pc, pr in lens)
    w = a.warmup_steps
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl-") as tmp:
        trl_data = os.path.join(tmp, "train_trl.jsonl")
        Path(trl_data).write_text("".join(json.dumps(c) + "\n" for c in convs))
        res, wall = run_child("trl", a, trl_data, os.path.join(tmp, "trl"))
        notes = []
        if skipped:
            notes.append(f"skipped {skipped} pair(s) whose prompt fills {MAX_LEN} tokens or whose replies are "
                         "identical (one side would drop them); trained the next usable pairs instead")
        if res["batch_tokens"] != step_tokens or res["batch_pairs"] != [BATCH] * a.steps \
                or res["rows_after_prep"] != len(rows):
            notes.append(f"TRL trained different pairs/tokens per step than the harness counted: "
                         f"{res['batch_pairs']} pairs, {res['batch_tokens']} tokens")
        if res["ref_model_loaded"] or res["precompute_ref_log_probs"] or res["gradient_checkpointing"]:
            notes.append(f"TRL setup differs from the intended one: ref_model_loaded={res['ref_model_loaded']}, "
                         f"precompute_ref_log_probs={res['precompute_ref_log_probs']}, "
                         f"gradient_checkpointing={res['gradient_checkpointing']}")
        if res["losses"] and abs(res["losses"][0] - math.log(2)) > 1e-3:
            notes.append(f"TRL's first loss is {res['losses'][0]:.4f}, not ln 2 = 0.6931 (policy != reference at "
                         "step 0?)")
        table = [row("trl", res["step_s"], step_tokens, w, res["maxrss_kib"], child_wall_s=wall,
                     **{k: v for k, v in res.items() if k not in ("step_s", "maxrss_kib")})]
        if not a.skip_tunesmith:
            laid = tunesmith_layout(rows, a.seed)
            if laid is None:
                laid = rows
                notes.append("could not align tunesmith's (seeded, shuffled) data order with file order")
            ts_data = os.path.join(tmp, "train_tunesmith.jsonl")
            Path(ts_data).write_text("".join(json.dumps(r) + "\n" for r in laid))
            for name, flags in [("tunesmith", [])] + [(f"tunesmith {f}", [f]) for f in a.extra.split(",") if f]:
                r = tunesmith_row(name, a, ts_data, tmp, flags, step_tokens)
                packing = "--packing" in flags
                table.append(r)
                if not packing:
                    notes.append(f"{name}: one row per pair with the prompt computed once: "
                                 f"{r['tokens_computed_share']:.0%} of the sequence tokens went through the model")
                if not r["tokens_match_harness"] or not r["pairs_match"]:
                    notes.append(f"{name} trained different pairs/tokens per step than the harness counted: "
                                 f"{r['tunesmith_reported_pairs']} pairs, {r['tunesmith_reported_tokens']} tokens")
    base = table[0]
    for r in table:
        r["pairs_per_s_ratio"] = r["pairs_per_s"] / base["pairs_per_s"]
        r["peak_rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        if r["step_s_spread"] > 1.5:
            notes.append(f"{r['side']}: slowest timed step {r['step_s_spread']:.1f}x the fastest: a busy machine? "
                         "compare the median s/step, or rerun")
    print(f"\n{'side':<18} {'steps timed':>11} {'pairs/s':>8} {'tokens/s':>9} {'s/step':>7} {'(median)':>8} "
          f"{'peak RSS MB':>11} {'ratio pairs/s':>13} {'ratio RSS':>9}")
    for r in table:
        print(f"{r['side']:<18} {r['steps_timed']:>11} {r['pairs_per_s']:>8.3f} {r['tokens_per_s']:>9.1f} "
              f"{r['s_per_step']:>7.2f} {r['s_per_step_median']:>8.2f} {r['peak_rss_mb']:>11.0f} "
              f"{r['pairs_per_s_ratio']:>13.2f} {r['peak_rss_ratio']:>9.2f}")
    print("TRL losses (first steps):", ", ".join(f"{x:.4f}" for x in res["losses"][:3]))
    for n in notes:
        print("note:", n)
    ts = next((r for r in table if r["side"] == "tunesmith"), None)
    result = dict(
        bench="dpo_vs_trl", date=datetime.date.today().isoformat(), host=socket.gethostname(),
        command=" ".join([Path(sys.executable).name] + sys.argv),
        settings=dict(model=a.model, data=a.data, pairs=len(rows), steps=a.steps, warmup_steps=w, seed=a.seed,
                      pairs_per_step=BATCH, grad_accum=1, max_length=MAX_LEN, precision="fp32", device="cpu",
                      lr=LR, optimizer="AdamW", beta=BETA, loss="sigmoid (standard DPO)",
                      reference="same model, adapter disabled", lora=dict(LORA, target_modules="all-linear"),
                      packing=False, sequences_truncated=truncated,
                      trl_dpo_config=trl_config_kwargs("OUT", a.steps, a.seed),
                      tunesmith_argv=tunesmith_argv(a.model, "DATA", a.steps, a.seed, "OUT")),
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      transformers=transformers.__version__, peft=peft.__version__, trl=trl.__version__),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        harness_step_tokens=step_tokens, pairs_skipped=skipped, rows=table, notes=notes,
        # per pair: prompt, prompt+chosen and prompt+rejected tokens, truncated (the model FLOPs of MFU: bench/run.py)
        examples=[dict(prompt=n, chosen=min(pc, MAX_LEN), rejected=min(pr, MAX_LEN)) for n, pc, pr in lens],
        trl_first_losses=res["losses"][:3],
        pairs_per_s_ratio=ts and ts["pairs_per_s_ratio"], peak_rss_ratio=ts and ts["peak_rss_ratio"],
    )
    path = Path(a.results_dir).resolve() / f"dpo_vs_trl-{result['date']}-{result['host']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
