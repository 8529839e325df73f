"""`python bench/gpu_check.py --dry-run` (issue 19, "GPU ready"): the GPU check runs its code paths on the CPU
at tiny shapes, every check passes or is skipped for a reason that holds on a CPU, and its figures meet the
tolerances: this test reads them from the results file rather than trusting the script's verdicts.

One subprocess, ~65-100 s on 2 CPU cores (a run of the whole script: two-process DDP and, when trl is
installed, tunesmith and TRL training side by side).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["bf16_autocast", "qlora_merge", "packed_unpacked", "dpo_ln2", "ddp_two_ranks", "throughput", "liger_fused_ce"]
HAS_TRL = importlib.util.find_spec("trl") is not None
HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None
# The checks a CPU may skip, and the reason each must give; every other check must be ok.
CPU_SKIPS = {
    "liger_fused_ce": "CUDA only" if HAS_LIGER else "not installed",
    **({} if HAS_TRL else {"throughput": "trl is not installed"}),
}


def test_dry_run_passes_every_check_it_can_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--results-dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "check            status" in done.stdout and "all checks passed" in done.stdout  # the summary table

    (path,) = tmp_path.glob("gpu_check-*-dry-run.json")
    result = json.loads(path.read_text())
    assert {
        "bench",
        "date",
        "host",
        "mode",
        "device",
        "versions",
        "tolerances",
        "wall_s",
        "ok",
        "checks",
    } <= result.keys()
    assert result["bench"] == "gpu_check" and result["mode"] == "dry-run (cpu)" and result["ok"] is True
    checks, tol = result["checks"], result["tolerances"]
    assert sorted(checks, key=lambda name: checks[name]["n"]) == CHECKS
    for name, c in checks.items():
        assert {"n", "status", "reason", "seconds"} <= c.keys(), name
        if name in CPU_SKIPS:
            assert c["status"] == "skipped" and CPU_SKIPS[name] in c["reason"], (name, c)
        else:
            assert c["status"] == "ok", (name, c["reason"])

    c = checks["bf16_autocast"]
    assert all(math.isfinite(x) for x in c["bf16_losses"] + c["bf16_grad_norms"])
    assert c["bf16_losses"][0] != c["fp32_losses"][0]  # autocast really ran in bf16 ...
    assert abs(c["bf16_losses"][0] - c["fp32_losses"][0]) <= tol["bf16_loss_rel"] * c["fp32_losses"][0]  # ... closely

    c = checks["qlora_merge"]
    assert c["merged_vs_adapter_max_abs"] <= tol["merge_logits"]
    assert c["original_merge_vs_adapter_max_abs"] > 10 * c["merged_vs_adapter_max_abs"]

    c = checks["packed_unpacked"]
    for layout in ("flat", "rows_of_512", "shared_prefix"):
        assert c[f"fp32_{layout}"]["loss_diff"] <= tol["packed_loss"] == 1e-5, layout
        assert c[f"fp32_{layout}"]["grads_within_tol"], layout
    assert c["shared_prefix_row_tokens"] < c["tokens"]  # the shared prompt really was computed once
    assert c["bf16_flat"]["loss_rel_diff"] <= tol["packed_bf16_loss_rel"]
    assert c["bf16_flat"]["grad_rel_diff"] <= tol["packed_bf16_grad_rel"]

    c = checks["dpo_ln2"]
    for layout in ("prompt_once", "packing"):
        assert abs(c[f"{layout}_first_loss"] - math.log(2)) <= 1e-4, (layout, c)

    c = checks["ddp_two_ranks"]
    assert c["backend"] == "gloo" and c["processes"] == 2 and len(c["two_process_losses"]) == 2
    assert max(abs(a - b) for a, b in zip(c["one_process_losses"], c["two_process_losses"])) <= 1e-4
    assert c["adapter_max_diff"] <= 1e-4

    if HAS_TRL:
        rows = checks["throughput"]["rows"]
        assert [(r["job"], r["side"]) for r in rows] == [
            (job, side) for job in ("sft-lora", "sft-qlora", "dpo-lora") for side in ("tunesmith", "trl")
        ]
        for r in rows:
            assert r["status"] == "ok" and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1, r
            assert r["tokens_match"], r  # both sides trained the tokens counted for them
        assert all(r["speed_x_trl"] > 0 for r in rows)
