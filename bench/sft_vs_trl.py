"""SFT throughput and peak memory: tunesmith vs TRL's SFTTrainer + PEFT, side by side.

Run from the repository root (CPU, a few minutes):

    PYTHONPATH=src python bench/sft_vs_trl.py [--steps 6] [--warmup-steps 1] [--model DIR] [--data FILE]
                                              [--method lora|qlora] [--max-length 128] [--lora-dropout 0]

Needs `trl` (pip install "trl==1.16.0", check with --dry-run that it keeps your torch). Both sides train
SmolLM2-135M-Instruct with LoRA r=16, alpha=32, dropout 0 (PEFT's and both tools' default; --lora-dropout) on all
linear layers of the blocks, over an fp32 base (--method lora) or an NF4 double-quantised one (--method qlora,
bitsandbytes, compute in fp32), 8 examples per optimizer step (no accumulation), max length 128 (--max-length;
longer rows truncated), fp32, AdamW lr 2e-4, loss on assistant tokens, on the first steps*8 usable rows of the data
in file order (rows whose reply starts past the max length are skipped: both sides would drop them). Step k trains the same 8 examples on both sides (TRL: sequential sampler;
tunesmith, which always shuffles with its seed: rows laid out so that its order is the file order). Each side runs
in its own fresh subprocess, which reports its peak RSS (ru_maxrss). tokens/s = non-padding tokens of the timed
steps' examples, counted once here with the model's tokenizer and chat template, / wall seconds of the timed steps
(TRL: a TrainerCallback from on_step_begin to on_step_end; tunesmith: `step_s` in its metrics.jsonl). TRL pads each
batch to its longest row (its default, no packing); tunesmith runs with its defaults, which pack each step's 8
examples into one row with no padding (attention per example) and compute a prompt prefix that they share once
(the demo data's 81-token system prompt: `--no-shared-prefix` turns that off), and in extra rows with each of the
--extra flags (default: --no-packing, padding like TRL; bench/run.py asks for --compile and --no-shared-prefix).
Prints a table and writes bench/results/sft_vs_trl-<date>-<host>.json (see --results-dir).
"""
from __future__ import annotations

import argparse, datetime, json, os, platform, resource, socket, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, LR = 8, 2e-4
MAX_LEN, METHOD, LORA = 128, "lora", dict(r=16, alpha=32, dropout=0.0)  # set from the flags by configure()
# SmolLM2's stock chat template with TRL's {% generation %} markers around each assistant reply and its
# "<|im_end|>\n" (the span tunesmith trains); it renders the same text as the stock template (checked before use).
SMOL_MARKED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def configure(a: argparse.Namespace) -> None:
    """The settings both sides share, from the flags (the parent passes them on to each child)."""
    global MAX_LEN, METHOD
    MAX_LEN, METHOD, LORA["dropout"] = a.max_length, a.method, a.lora_dropout


def load_trl_model(path: str):
    """The base as TRL + PEFT users load it: fp32, or (qlora) NF4 with double quantisation, computing in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if METHOD == "lora":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=nf4,
                                                device_map={"": "cpu"})


def emit(obj: dict) -> None:
    """Child side: peak RSS of this process, then one JSON line, the last on stdout."""
    obj["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(obj), flush=True)


def child_trl(a: argparse.Namespace) -> None:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    tok = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train")
    loss_on, note = "assistant", "TRL's own training template"
    if not has_generation_markers(tok.chat_template):
        try:
            get_training_chat_template(tok)
        except ValueError:  # TRL ships no training template for SmolLM2's: use ours if it renders the same
            render = lambda t: [tok.apply_chat_template(r["messages"], tokenize=False, chat_template=t) for r in data]
            if render(SMOL_MARKED_TEMPLATE) == render(tok.chat_template):
                tok.chat_template, note = SMOL_MARKED_TEMPLATE, "stock template + bench's {% generation %} markers"
            else:
                loss_on, note = "all", "no {% generation %} template renders like the stock one: loss on all tokens"
    step_s, batch_tokens, t0 = [], [], [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            t0[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - t0[0])

    cfg = SFTConfig(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="cosine", optim="adamw_torch", max_grad_norm=1.0,
        max_length=MAX_LEN, packing=False, padding_free=False, assistant_only_loss=loss_on == "assistant",
        bf16=False, fp16=False, gradient_checkpointing=False,  # TRL defaults both to True
        train_sampling_strategy="sequential", shuffle_dataset=False, seed=a.seed, data_seed=a.seed,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, use_cpu=True,
    )
    peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules="all-linear", task_type="CAUSAL_LM")
    model = load_trl_model(a.model)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                         peft_config=peft_cfg, callbacks=[Timer()])
    collate = trainer.data_collator

    def counting_collator(examples):  # records the non-padding tokens of each batch actually trained
        batch = collate(examples)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    emit(dict(step_s=step_s, batch_tokens=batch_tokens[: a.steps], losses=losses, loss_on=loss_on,
              loss_mask_note=note, rows_after_prep=len(trainer.train_dataset), threads=torch.get_num_threads(),
              trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)))


def child_tunesmith(a: argparse.Namespace) -> None:
    import torch
    from tunesmith.cli import main

    rc = main(tunesmith_argv(a.model, a.data, a.steps, a.seed, a.out, json.loads(a.flags)))
    emit(dict(rc=rc, threads=torch.get_num_threads()))


def tunesmith_argv(model, data, steps, seed, out, flags=()) -> list[str]:
    """`tunesmith sft` with the shared settings and tunesmith's defaults for the rest (packing on), plus `flags`."""
    return ["sft", "--model", model, "--data", data, "--method", METHOD, "--lora-r", str(LORA["r"]),
            "--lora-alpha", str(LORA["alpha"]), "--lora-dropout", str(LORA["dropout"]), "--target", "all-linear",
            "--batch-size", str(BATCH), "--micro-batch-size", str(BATCH), "--max-length", str(MAX_LEN),
            "--precision", "fp32", "--lr", str(LR),
            "--max-steps", str(steps), "--seed", str(seed), "--log-every", "1", "--out", out, "--overwrite", *flags]


def run_child(side: str, a: argparse.Namespace, data: str, out: str, flags=()) -> tuple[dict, float]:
    cmd = [sys.executable, __file__, "--child", side, "--model", a.model, "--data", data, "--out", out,
           "--steps", str(a.steps), "--seed", str(a.seed), "--max-length", str(MAX_LEN), "--method", METHOD,
           "--lora-dropout", str(LORA["dropout"]), "--flags", json.dumps(list(flags))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines or not lines[-1].startswith("{"):
        sys.exit(f"{side} child failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return json.loads(lines[-1]), wall


def row(name: str, step_s: list[float], step_tokens: list[int], w: int, maxrss_kib: int, **extra) -> dict:
    secs, toks, timed = sum(step_s[w:]), sum(step_tokens[w:]), sorted(step_s[w:])
    return dict(side=name, steps_timed=len(timed), timed_tokens=toks, timed_s=secs, tokens_per_s=toks / secs,
                s_per_step=secs / len(timed), s_per_step_median=timed[len(timed) // 2],
                step_s_spread=timed[-1] / timed[0], peak_rss_mb=maxrss_kib / 1024, step_s=step_s,
                step_tokens=step_tokens, **extra)


def tunesmith_row(name: str, a, data: str, tmp: str, flags: list[str], step_tokens: list[int]) -> dict:
    out = os.path.join(tmp, name.replace(" ", "_"))
    res, wall = run_child("tunesmith", a, data, out, flags)
    if res["rc"] != 0:
        sys.exit(f"tunesmith sft exited {res['rc']}")
    recs = [json.loads(l) for l in Path(out, "metrics.jsonl").read_text().splitlines() if l.strip()]
    recs = [r for r in recs if "step_s" in r and "tokens" in r][: a.steps]
    own = [int(r["tokens"]) for r in recs]
    return row(name, [float(r["step_s"]) for r in recs], step_tokens, a.warmup_steps, res["maxrss_kib"],
               tunesmith_reported_tokens=own, tokens_match_harness=own == step_tokens,
               shares_prefixes=not {"--no-shared-prefix", "--no-packing"} & set(flags),
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


def reply_start(tok, messages: list[dict]) -> int | None:
    """The token where the first assistant reply starts, or None when it starts at or past MAX_LEN (both sides
    drop examples whose trained tokens all lie past the truncation, which would shift every later batch)."""
    i = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if i is None:
        return None
    start = len(tok.apply_chat_template(messages[:i], tokenize=True, return_dict=True,
                                        add_generation_prompt=True)["input_ids"])
    return start if start < MAX_LEN else None


def model_dir() -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-m", "tunesmith", "models", "path", "smollm2-135m-instruct"],
                       capture_output=True, text=True, env=env, check=True)
    return p.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="HF model directory (default: tunesmith models path smollm2-135m-instruct)")
    ap.add_argument("--data", default=str(ROOT / "src/tunesmith/demo/data/support_train.jsonl"))
    ap.add_argument("--method", choices=["lora", "qlora"], default="lora")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--results-dir", default=str(ROOT / "bench/results"), help="where the results JSON goes")
    ap.add_argument("--skip-tunesmith", action="store_true", help="run the TRL side only")
    ap.add_argument("--extra", default="--no-packing", help="comma-separated tunesmith flags, each adding a row "
                    "that runs tunesmith with it (default --no-packing: padded like TRL; '' for none)")
    ap.add_argument("--child", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--flags", default="[]", help=argparse.SUPPRESS)
    a = ap.parse_args()
    configure(a)
    if a.child:
        return child_trl(a) if a.child == "trl" else child_tunesmith(a)
    assert a.steps > a.warmup_steps >= 0, "--steps must exceed --warmup-steps"
    a.model = a.model or model_dir()

    import peft, torch, transformers, trl
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    rows_all = [json.loads(l) for l in Path(a.data).read_text().splitlines() if l.strip()]
    rows, starts, skipped = [], [], 0
    for r in rows_all:
        if len(rows) == a.steps * BATCH:
            break
        if (start := reply_start(tok, r["messages"])) is not None:
            rows.append(r), starts.append(start)
        else:
            skipped += 1
    assert len(rows) == a.steps * BATCH, f"{a.data}: {len(rows)} usable rows, need {a.steps * BATCH}"
    ex_ids = [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][:MAX_LEN]
              for r in rows]
    ex_tokens = [len(ids) for ids in ex_ids]
    step_tokens = [sum(ex_tokens[i * BATCH:(i + 1) * BATCH]) for i in range(a.steps)]
    # the prefixes (s tokens shared by k examples) that tunesmith's default packing computes once per step
    from tunesmith.data.packing import prefix_groups

    shared = [[[s, len(m)] for s, m in prefix_groups(ex_ids[i * BATCH:(i + 1) * BATCH], starts[i * BATCH:(i + 1) * BATCH])
               if len(m) > 1] for i in range(a.steps)]
    # what the model FLOPs of MFU need (bench/run.py): each example's length, and the tokens from its first reply
    # on (the trained ones, for a single-turn chat; an upper bound when later user turns follow)
    examples = [dict(tokens=n, trained=n - s) for n, s in zip(ex_tokens, starts)]
    w = a.warmup_steps
    with tempfile.TemporaryDirectory(prefix="sft_vs_trl-") as tmp:
        subset = os.path.join(tmp, "train.jsonl")
        Path(subset).write_text("".join(json.dumps(r) + "\n" for r in rows))
        res, wall = run_child("trl", a, subset, os.path.join(tmp, "trl"))
        notes = [f"TRL loss mask: {res['loss_on']} tokens ({res['loss_mask_note']})"]
        if skipped:
            notes.append(f"skipped {skipped} row(s) whose assistant reply starts past token {MAX_LEN} (both sides "
                         "would drop them after truncation); trained the next usable rows instead")
        if res["batch_tokens"] != step_tokens or res["rows_after_prep"] != len(rows):
            notes.append(f"TRL trained different tokens per step than the harness counted: {res['batch_tokens']}")
        table = [row("trl", res["step_s"], step_tokens, w, res["maxrss_kib"], child_wall_s=wall,
                     **{k: v for k, v in res.items() if k not in ("step_s", "maxrss_kib")})]
        if not a.skip_tunesmith:
            laid = tunesmith_layout(rows, a.seed)
            if laid is None:
                laid = rows
                notes.append("could not align tunesmith's (seeded, shuffled) data order with file order")
            ts_data = os.path.join(tmp, "train_tunesmith.jsonl")
            Path(ts_data).write_text("".join(json.dumps(r) + "\n" for r in laid))
            variants = [("tunesmith", [])] + [(f"tunesmith {f}", [f]) for f in a.extra.split(",") if f]
            for name, flags in variants:
                table.append(tunesmith_row(name, a, ts_data, tmp, flags, step_tokens))
                if not table[-1]["tokens_match_harness"]:
                    notes.append(f"{name} trained different tokens per step than the harness counted: "
                                 f"{table[-1]['tunesmith_reported_tokens']}")
    base = table[0]
    for r in table:
        r["tokens_per_s_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["peak_rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        if r["step_s_spread"] > 1.5:
            notes.append(f"{r['side']}: slowest timed step {r['step_s_spread']:.1f}x the fastest: a busy machine? "
                         "compare the median s/step, or rerun")
    print(f"\n{'side':<22} {'steps timed':>11} {'tokens/s':>9} {'s/step':>7} {'(median)':>8} {'peak RSS MB':>11} "
          f"{'ratio tok/s':>11} {'ratio RSS':>9}")
    for r in table:
        print(f"{r['side']:<22} {r['steps_timed']:>11} {r['tokens_per_s']:>9.1f} {r['s_per_step']:>7.2f} "
              f"{r['s_per_step_median']:>8.2f} {r['peak_rss_mb']:>11.0f} {r['tokens_per_s_ratio']:>11.2f} "
              f"{r['peak_rss_ratio']:>9.2f}")
    for n in notes:
        print("note:", n)
    ts = next((r for r in table if r["side"] == "tunesmith"), None)
    result = dict(
        bench="sft_vs_trl", date=datetime.date.today().isoformat(), host=socket.gethostname(),
        command=" ".join([Path(sys.executable).name] + sys.argv),
        settings=dict(model=a.model, data=a.data, rows=len(rows), steps=a.steps, warmup_steps=w, seed=a.seed,
                      batch=BATCH, grad_accum=1, max_length=MAX_LEN, precision="fp32", device="cpu", lr=LR,
                      method=METHOD, optimizer="AdamW", lora=dict(LORA, target_modules="all-linear"),
                      packing=dict(trl=False, tunesmith=True),
                      trl_extra=dict(gradient_checkpointing=False, optim="adamw_torch", max_grad_norm=1.0,
                                     lr_scheduler="cosine", sampler="sequential"),
                      tunesmith_argv=tunesmith_argv(a.model, "DATA", a.steps, a.seed, "OUT")),
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      transformers=transformers.__version__, peft=peft.__version__, trl=trl.__version__),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        harness_step_tokens=step_tokens, examples=examples, shared_prefixes=shared, rows_skipped=skipped,
        rows=table, notes=notes,
        tokens_per_s_ratio=ts and ts["tokens_per_s_ratio"], peak_rss_ratio=ts and ts["peak_rss_ratio"],
    )
    path = Path(a.results_dir).resolve() / f"sft_vs_trl-{result['date']}-{result['host']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
