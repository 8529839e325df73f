"""Forgetting evidence (issue 5): an aggressive fine-tune of the demo task, unguarded vs guarded.

    python bench/forgetting.py [--train-examples 400] [--epochs 3] [--lr 2e-3] [--out runs/forgetting]

Both runs: LoRA r16 on SmolLM2-135M-Instruct, the demo's JSON-extraction task (the first N training rows),
a high learning rate and 3 epochs: the config that forgets.
  A  unguarded (drift measured every --every steps, for the curve only)
  B  the same plus --replay self --replay-ratio 0.1 and a budget --max-probe-ppl-increase 0.05
Then each result is scored the same way: task accuracy (json_valid and field accuracy of greedy answers on
the demo's 120 held-out messages) and drift on the whole bundled probe (`tunesmith eval`). Target: B keeps
the probe perplexity increase <= 5% with task field accuracy within 2 points of A.
Writes bench/results/forgetting-<date>-<host>.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

from harness import ROOT, write_result


def train(name: str, out: Path, data: Path, a, guarded: bool) -> dict:
    from tunesmith.config.schema import SFTConfig
    from tunesmith.demo.run import MODEL
    from tunesmith.recipes.sft import run_sft

    cfg = SFTConfig(model=MODEL, method="lora", out=str(out / name), overwrite=True)
    cfg.data.train, cfg.data.max_length = str(data), 256
    cfg.lora.r, cfg.lora.alpha = 16, 32.0
    cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.seed = a.lr, a.epochs, 8, 0
    cfg.train.save_every = 0
    cfg.forgetting.every, cfg.forgetting.probe_size = a.every, a.probe_size
    if guarded:
        cfg.data.replay, cfg.data.replay_ratio = "self", a.replay_ratio
        cfg.forgetting.max_probe_ppl_increase = a.budget
    cfg.validate()
    started = time.time()
    result = run_sft(cfg, progress=False)
    run = json.loads((result.run_dir / "run.json").read_text())
    return {
        "adapter": str(result.output),
        "steps": result.steps,
        "seconds": round(time.time() - started, 1),
        "replay_examples": run["replay_examples"],
        "forgetting": run.get("forgetting"),
    }


def score(adapter: str) -> dict:
    from tunesmith.data.formats import load_sft_file
    from tunesmith.demo.run import HELDOUT_FILE, MODEL, score_model
    from tunesmith.forgetting.evaluate import evaluate_model
    from tunesmith.models.inference import load_for_inference

    drift = evaluate_model(MODEL, adapter, say=print)
    model, tokenizer = load_for_inference(MODEL, [adapter], merge=True)
    task, _ = score_model(model, tokenizer, load_sft_file(HELDOUT_FILE))
    return {
        "probe_perplexity": drift["probe_perplexity"],
        "base_probe_perplexity": drift["base_probe_perplexity"],
        "probe_ppl_increase": drift["probe_ppl_increase"],
        "kl_to_base": drift["kl_to_base"],
        "json_valid": task["json_valid"],
        "field_accuracy": task["field_accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-examples", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=10, help="drift measured every N steps in both runs")
    ap.add_argument("--probe-size", type=int, default=96, help="probe prompts measured during training")
    ap.add_argument("--replay-ratio", type=float, default=0.1)
    ap.add_argument("--budget", type=float, default=0.05, help="run B: --max-probe-ppl-increase")
    ap.add_argument("--b-name", default="B_replay_budget", help="name of the guarded run (to try other settings)")
    ap.add_argument("--a-from", help="a previous result file: reuse its run A instead of training A again")
    ap.add_argument("--out", default="runs/forgetting")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    import torch

    from tunesmith.demo.run import TRAIN_FILE

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "train.jsonl"
    data.write_text("".join(TRAIN_FILE.read_text(encoding="utf-8").splitlines(keepends=True)[: a.train_examples]))
    runs = {}
    if a.a_from:
        runs["A_unguarded"] = json.loads(Path(a.a_from).read_text())["runs"]["A_unguarded"]
    for name, guarded in (("A_unguarded", False), (a.b_name, True)):
        if name in runs:
            continue
        print(f"\n== {name} ==", flush=True)
        runs[name] = train(name, out, data, a, guarded)
        runs[name].update(score(runs[name]["adapter"]))
    A, B = runs["A_unguarded"], runs[a.b_name]
    result = {
        "bench": "forgetting",
        "date": datetime.date.today().isoformat(),
        "host": socket.gethostname(),
        "command": " ".join(["python", "bench/forgetting.py", *sys.argv[1:]]),
        "settings": vars(a),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "runs": runs,
        "target": {"B_probe_ppl_increase_max": 0.05, "B_field_accuracy_within_points_of_A": 2},
        "met": {
            "B_probe_ppl_increase": B["probe_ppl_increase"] <= 0.05,
            "B_accuracy_within_2_points": (A["field_accuracy"] - B["field_accuracy"]) * 100 <= 2,
        },
    }
    print(
        f"\n{'run':18s} {'steps':>5s} {'field acc':>9s} {'json ok':>7s} {'probe ppl +':>11s} {'KL':>7s} {'replay':>6s}"
    )
    for name, r in runs.items():
        print(
            f"{name:18s} {r['steps']:5d} {r['field_accuracy']:9.3f} {r['json_valid']:7.3f} "
            f"{r['probe_ppl_increase']:11.2%} {r['kl_to_base']:7.4f} {r['replay_examples']:6d}"
        )
    if B["forgetting"] and B["forgetting"]["budget_exceeded"]:
        print(f"B stopped: {B['forgetting']['budget_exceeded']}; kept step {B['forgetting']['kept_step']}")
    print(f"targets met: {result['met']}")
    suffix = "" if a.b_name == "B_replay_budget" else f"-{a.b_name}"
    write_result(result, a.results_dir, suffix)


if __name__ == "__main__":
    main()
