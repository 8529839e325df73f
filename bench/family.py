"""SFT and DPO beyond the best case (issue 20): tunesmith vs TRL + PEFT on data without a long shared prompt.

Run from the repository root (CPU; about 45 minutes on 2 cores for all six jobs):

    PYTHONPATH=src python bench/family.py [--jobs sft-short,...] [--steps 6] [--suffix=-avx2]

Each job runs `sft_vs_trl.py` or `dpo_vs_trl.py` (their harness, settings and checks; tunesmith at its
defaults, TRL at its fastest correct setting: no gradient checkpointing, no packing) on one dataset of
`data_family.py`, built here from the demo's tone data with the model's tokenizer:

    sft-short, dpo-short           one user message and one reply, no system prompt: max length 128
    sft-mixed, dpo-mixed           ~30-500 tokens, log-uniform: max length 512
    sft-multiturn, dpo-multiturn   2-4 exchanges (DPO: the last reply is the pair): max length 512

and collects each job's speed ratio (SFT: tokens/s; DPO: pairs/s) and peak RSS ratio to TRL, with each
side's traced RSS (harness.RssTrace: what the RSS was when the first forward began, by what backs it, and
where the peak fell). Issue 20's targets: SFT >= 2.5x TRL's speed, DPO >= 2x, both at <= 0.8x its peak RSS.
Writes bench/results/family-<date>-<host><suffix>.json and .md; the side-by-side results of each job go to
the same directory as <script>-<date>-<host>-<job><suffix>.json. To emulate a CPU without AMX or AVX-512
(fp32 only), run it under MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from data_family import KINDS, dpo_rows, sft_rows, write
from harness import ROOT, child_env, default_model_dir, write_result

HERE = Path(__file__).resolve().parent
MAX_LENGTH = dict(short=128, mixed=512, multiturn=512)
TARGET = dict(sft=2.5, dpo=2.0)  # speed ratio to TRL; peak RSS ratio <= RSS_TARGET for both
RSS_TARGET = 0.8
JOBS = [f"{job}-{kind}" for job in ("sft", "dpo") for kind in KINDS]


def run_job(job: str, kind: str, a, tmp: str, count) -> dict:
    """One side-by-side run on a fresh dataset of `kind`: its results JSON (written to a.results_dir)."""
    n = a.steps * 8 * 2  # more rows than the steps need: the scripts skip unusable ones
    rows = (sft_rows if job == "sft" else dpo_rows)(kind, n, a.seed, count)
    data = write(os.path.join(tmp, f"{job}_{kind}.jsonl"), rows)
    out = os.path.join(tmp, f"{job}-{kind}")
    cmd = [
        sys.executable,
        str(HERE / f"{job}_vs_trl.py"),
        "--data",
        data,
        "--max-length",
        str(MAX_LENGTH[kind]),
        "--steps",
        str(a.steps),
        "--extra=",
        "--results-dir",
        out,
    ]
    print(f"== {job}-{kind}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=child_env())
    (path,) = Path(out).glob("*.json")
    result = json.loads(path.read_text())
    result["bench"] = f"{job}_vs_trl"
    write_result(result, a.results_dir, f"-{job}-{kind}{a.suffix}")
    return result


def summarise(job: str, kind: str, result: dict) -> dict:
    """The row of the family table: both sides' speed, peak RSS and traced RSS, and whether the targets hold."""
    speed = "tokens_per_s" if job == "sft" else "pairs_per_s"
    trl, ts = (next(r for r in result["rows"] if r["side"] == side) for side in ("trl", "tunesmith"))
    ratio, rss = ts[f"{speed}_ratio"], ts["peak_rss_ratio"]
    return dict(
        job=f"{job}-{kind}",
        max_length=MAX_LENGTH[kind],
        speed=speed,
        trl=dict(s_per_step=trl["s_per_step"], peak_rss_mb=trl["peak_rss_mb"], rss_trace=trl.get("rss_trace")),
        tunesmith=dict(s_per_step=ts["s_per_step"], peak_rss_mb=ts["peak_rss_mb"], rss_trace=ts.get("rss_trace")),
        speed_ratio=ratio,
        peak_rss_ratio=rss,
        speed_target=TARGET[job],
        meets_speed=ratio >= TARGET[job],
        meets_memory=rss <= RSS_TARGET,
        notes=result.get("notes", []),
    )


def first_forward_mb(side: dict) -> str:
    ff = (side.get("rss_trace") or {}).get("first_forward")
    return f"{ff['rss_mb']:.0f}" if ff else "-"


def markdown(rows: list[dict], machine: str) -> str:
    lines = [
        f"# Short-data family, {datetime.date.today().isoformat()}, {machine}",
        "",
        "| job | max len | TRL s/step | tunesmith s/step | speed ratio (target) | TRL peak MB | tunesmith peak MB "
        f"| RSS ratio (<= {RSS_TARGET}) | RSS at 1st forward TRL / tunesmith |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = lambda ok: "met" if ok else "**not met**"  # noqa: E731
        lines.append(
            f"| {r['job']} | {r['max_length']} | {r['trl']['s_per_step']:.2f} | {r['tunesmith']['s_per_step']:.2f} "
            f"| {r['speed_ratio']:.2f}x ({r['speed_target']}x, {mark(r['meets_speed'])}) "
            f"| {r['trl']['peak_rss_mb']:.0f} | {r['tunesmith']['peak_rss_mb']:.0f} "
            f"| {r['peak_rss_ratio']:.2f} ({mark(r['meets_memory'])}) "
            f"| {first_forward_mb(r['trl'])} / {first_forward_mb(r['tunesmith'])} |"
        )
    lines += [
        "",
        "Where each side's peak RSS goes (MB; `harness.RssTrace`): RSS when the first forward began (imports, "
        "tokenizer, data, the model's structure; weights are read in place from the mapped file), and near "
        "the peak: the mapped weights, libraries, and anonymous memory above its level at the first forward "
        "(activations, the loss's buffers and what the allocator keeps of freed ones), with the phase the "
        "peak fell in (other: outside a module's forward, backward and the optimizer step; for tunesmith, "
        "its loss, which runs the LM head on the decoder's output itself).",
        "",
        "| job | side | at 1st forward | peak | weights mapped | libraries | anonymous added | peak phase |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        for side in ("trl", "tunesmith"):
            t = r[side].get("rss_trace") or {}
            ff, pk = t.get("first_forward"), t.get("peak")
            if not ff or not pk:
                continue
            lines.append(
                f"| {r['job']} | {side} | {ff['rss_mb']:.0f} | {r[side]['peak_rss_mb']:.0f} | "
                f"{pk['safetensors_mb']:.0f} | {pk['libraries_mb']:.0f} | "
                f"{pk['anonymous_mb'] - ff['anonymous_mb']:.0f} | {pk['phase']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per side (the first is not timed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suffix", default="", help="added to the results' file names (e.g. --suffix=-avx2)")
    ap.add_argument("--results-dir", default=str(ROOT / "bench/results"))
    ap.add_argument("--render", metavar="JSON", help="print the tables of a results file of this script; run nothing")
    a = ap.parse_args()
    if a.render:
        result = json.loads(Path(a.render).read_text())
        return print(markdown(result["rows"], result["machine"]))
    jobs = [j for j in a.jobs.split(",") if j]
    if bad := [j for j in jobs if j not in JOBS]:
        sys.exit(f"unknown job(s) {', '.join(bad)}; choose from {', '.join(JOBS)}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    count = lambda text: len(tok(text)["input_ids"])  # noqa: E731
    from tunesmith.models.load import cpu_description  # the ISA the run's matmuls use, emulation included

    machine = f"{socket.gethostname()}, {os.cpu_count()} CPUs, {cpu_description()}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="family-") as tmp:
        for name in jobs:
            job, kind = name.split("-", 1)
            rows.append(summarise(job, kind, run_job(job, kind, a, tmp, count)))
    table = markdown(rows, machine)
    print(table)
    result = dict(
        bench="family",
        date=datetime.date.today().isoformat(),
        host=socket.gethostname(),
        machine=machine,
        command=" ".join([Path(sys.executable).name] + sys.argv),
        env={
            k: os.environ[k]
            for k in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
            if k in os.environ
        },
        steps=a.steps,
        rows=rows,
    )
    write_result(result, a.results_dir, a.suffix)
    md = Path(a.results_dir) / f"family-{result['date']}-{result['host']}{a.suffix}.md"
    md.write_text(table)


if __name__ == "__main__":
    main()
