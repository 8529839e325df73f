"""The performance harness: tunesmith vs TRL + PEFT for SFT (LoRA, QLoRA) and DPO, at max length 128 and 512,
with MFU against this machine's measured matmul peak. One run, one table.

Run from the repository root (CPU: about 30-40 minutes on 2 cores; `--quick` for a smaller run):

    pip install "trl==1.16.0"                 # the baseline (check with --dry-run that it keeps your torch)
    PYTHONPATH=src python bench/run.py [--steps 4] [--warmup-steps 1] [--lengths 128,512] [--jobs sft-lora,...]

What it does, in order, in one process tree:

1. Measures the machine's matmul peak in the training dtype (fp32 on the CPU): the best of several timed
   `torch.matmul` of two 4096x4096 matrices, with torch's default thread count (the one both trainers use).
2. Runs each job, one after the other, through `bench/sft_vs_trl.py` or `bench/dpo_vs_trl.py` (see their
   docstrings: each side trains in its own fresh subprocess on the same examples in the same order, with the
   same model, SmolLM2-135M-Instruct, LoRA r=16/alpha=32/dropout 0 on all linear layers of the blocks, 8
   examples or pairs per optimizer step, fp32, AdamW; the first --warmup-steps steps are not timed):
       sft-lora    SFT, LoRA over the fp32 base                 (TRL SFTTrainer + PEFT)
       sft-qlora   SFT, LoRA over an NF4 double-quantised base  (TRL SFTTrainer + PEFT + bitsandbytes)
       dpo-lora    DPO (sigmoid, beta 0.1), reference = adapter off (TRL DPOTrainer + PEFT)
   each at every --lengths max length. tunesmith runs with its defaults (SFT packs each step's examples into
   one row and computes a prefix they share, here the demo data's system prompt, once; DPO computes each
   pair's prompt once), and once more with each --extra flag; TRL with its defaults except the settings both
   must share.
3. Computes, per row: tokens/s (non-padding tokens of the timed steps / their wall seconds; pairs/s for DPO),
   peak RSS of the training process, both as ratios to TRL's row of the same job, and

       MFU = model FLOPs of the timed steps / (their wall seconds x measured peak FLOP/s)

   Model FLOPs are those `tunesmith plan` counts (src/tunesmith/planner.py), per example of n tokens of which
   m are trained (loss-bearing), with N_lin the blocks' linear weights, N_head = V x d, N_lora the adapter:
       SFT (LoRA, QLoRA)  4 N_lin n + 4 N_head m + 6 N_lora n + 6 L qd n^2
                          (forward 2N, activation gradients 2N, no weight gradients for frozen weights; the LM
                          head is needed at trained positions only; attention score/value matmuls causal-counted)
       DPO                per chosen and rejected sequence, the SFT count (the policy) plus the reference
                          forward 2 N_lin n + 2 N_head m + 2 L qd n^2
   less what a row's layout never computes: tunesmith computes a prompt prefix that a step's SFT examples
   share once (`--no-shared-prefix` rows do not), and each DPO pair's prompt once; there the k - 1 copies
   of the prefix (per pair: the prompt less one token) are not counted. So MFU measures how busy each side
   keeps the machine with the work its layout needs, and speed ratios also show the work a layout skips.
   Neither side is counted for padding or for logits at untrained positions (TRL computes both). QLoRA's
   dequantisation is not counted as FLOPs.
4. Writes bench/results/<date>-<host>.json (everything, including each sub-bench's full result) and
   bench/results/<date>-<host>.md (the table and the issue-7 targets, each marked met or not).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, measure_peak, model_counts, sft_flops, versions

sys.path.insert(0, str(ROOT / "src"))
JOBS = {
    "sft-lora": ("sft_vs_trl.py", "lora"),
    "sft-qlora": ("sft_vs_trl.py", "qlora"),
    "dpo-lora": ("dpo_vs_trl.py", "lora"),
}
# issue 7's targets on a 2-core CPU: speed ratio to TRL (at least), memory ratio (at most), MFU, QLoRA/LoRA step time
TARGETS = {"sft-lora": (2.5, 0.8), "dpo-lora": (2.0, 0.8)}
SFT_LORA_MFU, QLORA_STEP_RATIO = 0.5, 1.5
SFT_ONLY = {"--no-shared-prefix"}  # --extra flags that only `tunesmith sft` takes


def reference_flops(c: dict, shape, n: int, m: int) -> float:
    """One forward of the base (the adapter off) over n tokens, logits at m."""
    return 2 * c["block_linear"] * n + 2 * c["head_matmul"] * m + 2 * shape.layers * shape.heads * shape.hd * n * n


def step_flops(job: str, result: dict, c: dict, shape, row: dict) -> list[float]:
    """Model FLOPs of each step's examples (8 per step, in the order both sides trained them), less what a
    row's own layout never computes: a prefix that k examples share runs once (tunesmith SFT), a pair's
    prompt runs once (tunesmith DPO; the rejected sequence restarts from the prompt's last token)."""
    ex = result["examples"]
    if job.startswith("sft"):
        per = [sft_flops(c, shape, e["tokens"], e["trained"]) for e in ex]
    else:
        per = [
            sum(
                sft_flops(c, shape, n, n - e["prompt"]) + reference_flops(c, shape, n, n - e["prompt"])
                for n in (e["chosen"], e["rejected"])
            )
            for e in ex
        ]
        if row.get("shares_prompt"):
            once = [min(e["prompt"], e["chosen"], e["rejected"]) - 1 for e in ex]
            per = [
                f - (sft_flops(c, shape, s, 0) + reference_flops(c, shape, s, 0) if s > 0 else 0)
                for f, s in zip(per, once)
            ]
    batch = len(per) // len(result["harness_step_tokens"])
    steps = [sum(per[i : i + batch]) for i in range(0, len(per), batch)]
    if job.startswith("sft") and row.get("shares_prefixes"):
        steps = [
            f - sum((k - 1) * sft_flops(c, shape, s, 0) for s, k in groups)
            for f, groups in zip(steps, result["shared_prefixes"])
        ]
    return steps


def run_job(job: str, length: int, a, tmp: str) -> dict:
    script, method = JOBS[job]
    out = Path(tmp, f"{job}-{length}")
    extra = [f for f in a.extra if script == "sft_vs_trl.py" or f not in SFT_ONLY]
    cmd = [
        sys.executable,
        str(ROOT / "bench" / script),
        "--steps",
        str(a.steps),
        "--warmup-steps",
        str(a.warmup_steps),
        "--max-length",
        str(length),
        "--results-dir",
        str(out),
        "--model",
        a.model,
        f"--extra={','.join(extra)}",
    ]
    if script == "sft_vs_trl.py":
        cmd += ["--method", method]
    print(f"== {job} at max length {length}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    p = subprocess.run(cmd, text=True, capture_output=True)
    print(p.stdout[-2500:], flush=True)
    found = sorted(out.glob("*.json"))
    if p.returncode or not found:
        print(f"{job} {length} failed (rc {p.returncode}); going on without it:\n{p.stderr[-3000:]}", flush=True)
        return None
    result = json.loads(found[0].read_text())
    result["wall_s"] = time.perf_counter() - t
    return result


def summarise(job: str, length: int, result: dict, peak: float, model_dir: str) -> list[dict]:
    c, shape = model_counts(model_dir, JOBS[job][1])
    w = result["settings"]["warmup_steps"]
    rows = []
    for r in result["rows"]:
        timed_flops = sum(step_flops(job, result, c, shape, r)[w:])
        rows.append(
            dict(
                job=job,
                max_length=length,
                side=r["side"],
                tokens_per_s=r["tokens_per_s"],
                pairs_per_s=r.get("pairs_per_s"),
                s_per_step=r["s_per_step"],
                s_per_step_median=r["s_per_step_median"],
                peak_rss_mb=r["peak_rss_mb"],
                speed_ratio=r.get("tokens_per_s_ratio", r.get("pairs_per_s_ratio")),
                memory_ratio=r["peak_rss_ratio"],
                model_flops_per_step=timed_flops / r["steps_timed"],
                mfu=timed_flops / r["timed_s"] / peak,
                step_s_spread=r["step_s_spread"],
            )
        )
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 7's targets, for each tunesmith row (defaults, and each --extra flag) and max length: what was
    measured and whether it is met."""
    out = []
    find = lambda job, side, length: next(
        (r for r in rows if (r["job"], r["side"], r["max_length"]) == (job, side, length)), None
    )
    sides = list(dict.fromkeys(r["side"] for r in rows if r["side"].startswith("tunesmith")))
    for length in sorted({r["max_length"] for r in rows}):
        for side in sides:
            for job, (speed, memory) in TARGETS.items():
                if r := find(job, side, length):
                    out.append(
                        dict(
                            target=f"{job} @{length}, {side}: speed >= {speed}x TRL at memory <= {memory}x",
                            measured=f"{r['speed_ratio']:.2f}x speed, {r['memory_ratio']:.2f}x memory",
                            met=r["speed_ratio"] >= speed and r["memory_ratio"] <= memory,
                        )
                    )
            if r := find("sft-lora", side, length):
                out.append(
                    dict(
                        target=f"sft-lora @{length}, {side}: MFU >= {SFT_LORA_MFU:.0%}",
                        measured=f"{r['mfu']:.1%}",
                        met=r["mfu"] >= SFT_LORA_MFU,
                    )
                )
            if r and (q := find("sft-qlora", side, length)):
                ratio = q["s_per_step"] / r["s_per_step"]
                out.append(
                    dict(
                        target=f"sft-qlora @{length}, {side}: step time <= {QLORA_STEP_RATIO}x LoRA's",
                        measured=f"{ratio:.2f}x",
                        met=ratio <= QLORA_STEP_RATIO,
                    )
                )
    return out


def markdown(rows: list[dict], goals: list[dict], meta: dict) -> str:
    lines = [
        f"# tunesmith vs TRL + PEFT — {meta['date']}, {meta['host']}",
        "",
        f"`{meta['command']}` · {meta['machine']} · torch {meta['versions']['torch']}, "
        f"transformers {meta['versions']['transformers']}, peft {meta['versions']['peft']}, "
        f"trl {meta['versions']['trl']} · measured {meta['peak']['dtype']} matmul peak "
        f"{meta['peak']['flops_per_s'] / 1e9:.0f} GFLOP/s ({meta['peak']['threads']} threads) · "
        f"{meta['steps']} steps, {meta['warmup_steps']} untimed",
        "",
        "| job | max len | side | tokens/s | pairs/s | s/step (median) | peak RSS MB | speed ×TRL | memory ×TRL | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pairs = f"{r['pairs_per_s']:.3f}" if r["pairs_per_s"] is not None else ""
        lines.append(
            f"| {r['job']} | {r['max_length']} | {r['side']} | {r['tokens_per_s']:.1f} | {pairs} | "
            f"{r['s_per_step']:.2f} ({r['s_per_step_median']:.2f}) | {r['peak_rss_mb']:.0f} | {r['speed_ratio']:.2f} | "
            f"{r['memory_ratio']:.2f} | {r['mfu']:.1%} |"
        )
    lines += ["", "| target (issue 7) | measured | met |", "|---|---|---|"]
    lines += [f"| {g['target']} | {g['measured']} | {'yes' if g['met'] else 'no'} |" for g in goals]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per side and job (default 4)")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the timing (default 1)")
    ap.add_argument("--lengths", default="128,512", help="max lengths, comma-separated (default 128,512)")
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--model", help="HF model directory (default: tunesmith's smollm2-135m-instruct)")
    ap.add_argument("--results-dir", default=str(ROOT / "bench/results"))
    ap.add_argument("--name", help="results file name without extension (default <date>-<host>)")
    ap.add_argument(
        "--extra",
        default="--compile,--no-shared-prefix",
        help="tunesmith flags, comma-separated, "
        "each run as an extra tunesmith row (default --compile,--no-shared-prefix, the latter for SFT "
        "only; '' for none)",
    )
    ap.add_argument("--quick", action="store_true", help="3 steps, max length 128 only (a smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.lengths = 3, "128"
    jobs, lengths, a.extra = (
        a.jobs.split(","),
        [int(x) for x in a.lengths.split(",")],
        [f for f in a.extra.split(",") if f],
    )
    unknown = [j for j in jobs if j not in JOBS]
    assert not unknown, f"unknown job(s) {unknown}; choose from {list(JOBS)}"
    vers = versions()
    from tunesmith.models import resolve_model_dir

    a.model = a.model or str(resolve_model_dir("smollm2-135m-instruct"))
    peak = measure_peak()
    print(
        f"measured float32 matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['threads']} threads)", flush=True
    )
    results, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        for length in lengths:
            for job in jobs:
                res = run_job(job, length, a, tmp)
                if res is not None:
                    results[f"{job}@{length}"] = res
                    rows += summarise(job, length, res, peak["flops_per_s"], a.model)
    goals = targets(rows)
    date, host = datetime.date.today().isoformat(), socket.gethostname()
    meta = dict(
        date=date,
        host=host,
        command=" ".join(["python"] + [Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        peak=peak,
        steps=a.steps,
        warmup_steps=a.warmup_steps,
        versions=vers,
    )
    table = markdown(rows, goals, meta)
    print("\n" + table)
    out = Path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = a.name or f"{date}-{host}"
    (out / f"{name}.json").write_text(json.dumps(dict(meta, rows=rows, targets=goals, jobs=results), indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
