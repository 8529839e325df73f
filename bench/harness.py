"""What the bench scripts share: child processes that report their peak RSS (and trace it by phase), timed rows and
their ratios, tunesmith's data order, result files, and the matmul peak and model FLOPs that MFU needs.

Not a benchmark. The scripts import it as a sibling module (`from harness import ...`), which works because
`python bench/<script>.py` puts bench/ first on sys.path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """This environment with src/ first on PYTHONPATH, for a child process that imports tunesmith."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))


def default_model_dir() -> str:
    """The local directory of smollm2-135m-instruct (built in a child process, so this one stays lean)."""
    code = "from tunesmith.models import resolve_model_dir; print(resolve_model_dir('smollm2-135m-instruct'))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    return p.stdout.strip().splitlines()[-1]


PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_parts() -> dict:
    """This process's resident memory now, in MB, by what backs it (/proc/self/smaps): anonymous memory (the
    heap: tensors, Python objects, allocator caches), *.safetensors files mapped (weights read in place),
    shared libraries, and other files."""
    parts = dict(anonymous_mb=0.0, safetensors_mb=0.0, libraries_mb=0.0, other_files_mb=0.0)
    key = "anonymous_mb"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
                path = head[5].strip() if len(head) > 5 else ""
                key = (
                    "anonymous_mb"
                    if not path.startswith("/")
                    else "safetensors_mb"
                    if path.endswith(".safetensors")
                    else "libraries_mb"
                    if ".so" in path
                    else "other_files_mb"
                )
            elif head[0] == "Rss:":
                parts[key] += int(head[1]) / 1024
    return parts


class RssTrace:
    """Samples this process's RSS every `interval` seconds in a thread, and what the training loop is doing
    (`phase`: setup until the first forward, then forward / backward / optimizer step, marked by global torch
    hooks that both sides run through), as segments of consecutive samples in one phase with their start, end
    and highest RSS. At the first forward and at each new high it also reads what backs the RSS (rss_parts).
    A sampled trace: a peak shorter than the interval shows in ru_maxrss (emit) but not here."""

    def __init__(self, interval: float = 0.02):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.phase, self.depth, self.interval, self.segments = "setup", 0, interval, []
        self.first_forward: dict | None = None
        self.at_peak: dict = {}
        self.done = threading.Event()
        self.hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._enter_forward),
            torch.nn.modules.module.register_module_forward_hook(self._leave_forward),
            register_optimizer_step_pre_hook(lambda *a: self._set("optimizer step")),
            register_optimizer_step_post_hook(lambda *a: self._set("other")),
        ]
        self.backward = backward = torch.autograd.backward  # Tensor.backward calls it by this name

        def traced_backward(*args, **kw):
            self._set("backward")
            try:
                return backward(*args, **kw)
            finally:
                self._set("other")

        torch.autograd.backward = traced_backward
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _set(self, phase: str) -> None:
        self.phase = phase

    def _enter_forward(self, module, args) -> None:
        if self.depth == 0:
            if self.first_forward is None:
                self.first_forward = dict(rss_mb=self._rss(), **rss_parts())
            self._set("forward")
        self.depth += 1

    def _leave_forward(self, module, args, out) -> None:
        self.depth -= 1
        if self.depth == 0:
            self._set("other")

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE / 2**20

    def _run(self) -> None:
        high, read_at = 0.0, 0.0
        while not self.done.is_set():
            rss, phase = self._rss(), self.phase
            # a new high: what backs it (reading smaps takes milliseconds: at most every 0.2 s, so the parts
            # are those of a sample within 32 MB or 0.2 s of the traced peak)
            if rss > high + 32 and time.perf_counter() - read_at > 0.2:
                high, read_at = rss, time.perf_counter()
                self.at_peak = dict(rss_mb=rss, phase=phase, **rss_parts())
            if self.segments and self.segments[-1]["phase"] == phase:
                seg = self.segments[-1]
                seg["end_mb"], seg["max_mb"] = rss, max(seg["max_mb"], rss)
            else:
                start = self.segments[-1]["end_mb"] if self.segments else rss
                self.segments.append(dict(phase=phase, start_mb=start, end_mb=rss, max_mb=max(start, rss)))
            time.sleep(self.interval)

    def stop(self) -> None:
        """Ends the sampling and takes the hooks out."""
        import torch

        self.done.set()
        self.thread.join()
        for hook in self.hooks:
            hook.remove()
        torch.autograd.backward = self.backward

    def summary(self) -> dict:
        """Per phase: the RSS it added and kept (sum over its segments of end - start) and the most it rose
        above its start at once; what backed the RSS when the first forward began (all but activations:
        imports, weights, data) and at the traced peak."""
        phases: dict[str, dict] = {}
        for s in self.segments:
            p = phases.setdefault(s["phase"], dict(kept_mb=0.0, transient_mb=0.0))
            p["kept_mb"] += s["end_mb"] - s["start_mb"]
            p["transient_mb"] = max(p["transient_mb"], s["max_mb"] - s["start_mb"])
        return dict(phases=phases, first_forward=self.first_forward, peak=self.at_peak)


TRACE: RssTrace | None = None


def emit(obj: dict) -> None:
    """Child side: peak RSS of this process (and its traced phases), then one JSON line, the last on stdout."""
    obj["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if TRACE is not None:  # stopped first: a sampling thread left running at exit aborts the interpreter
        TRACE.stop()
        obj["rss_trace"] = TRACE.summary()
    print(json.dumps(obj), flush=True)


def child_tunesmith(argv: list[str]) -> None:
    """Child side: `tunesmith <argv>` in this process, then its exit code and peak RSS (emit)."""
    import torch

    from tunesmith.cli import main

    rc = main(argv)
    emit(dict(rc=rc, threads=torch.get_num_threads()))


def run_child(cmd: list[str], what: str, stderr_tail: int = 6000, check_rc: bool = False) -> tuple[dict, float]:
    """Runs `cmd` (a child that ends with emit) with src/ on its PYTHONPATH: its JSON line and wall seconds.
    Exits naming `what` when it fails, prints no JSON, or (check_rc) reports an `rc` other than 0."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines or not lines[-1].startswith("{") or (check_rc and json.loads(lines[-1])["rc"] != 0):
        sys.exit(f"{what} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-stderr_tail:]}")
    return json.loads(lines[-1]), wall


def side_by_side_parser(doc: str, data: str, extra: str, extra_help: str) -> argparse.ArgumentParser:
    """The flags that sft_vs_trl.py and dpo_vs_trl.py share; each script adds its own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="HF model directory (default: tunesmith's smollm2-135m-instruct)")
    ap.add_argument("--data", default=data)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--results-dir", default=str(ROOT / "bench/results"), help="where the results JSON goes")
    ap.add_argument("--skip-tunesmith", action="store_true", help="run the TRL side only")
    ap.add_argument("--extra", default=extra, help=extra_help)
    ap.add_argument("--child", choices=["trl", "tunesmith"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--flags", default="[]", help=argparse.SUPPRESS)
    return ap


def child_side(a, child_trl, tunesmith_argv) -> None:
    """Child side of a side-by-side bench: the TRL side (child_trl(a)) or the tunesmith command (its argv),
    with its RSS traced (RssTrace) from the start."""
    global TRACE
    TRACE = RssTrace()  # imports torch: its import counts as setup
    if a.child == "trl":
        return child_trl(a)
    child_tunesmith(tunesmith_argv(a.model, a.data, a.steps, a.seed, a.out, json.loads(a.flags)))


def first_usable(path: str, n: int, measure, what: str) -> tuple[list[dict], list, int]:
    """The first n rows of a JSONL file, in file order, that `measure` keeps (returns other than None), what
    it returned for each, and how many rows it skipped before the n-th."""
    rows, measured, skipped = [], [], 0
    for r in read_jsonl(path):
        if len(rows) == n:
            break
        if (m := measure(r)) is None:
            skipped += 1
        else:
            rows.append(r), measured.append(m)
    assert len(rows) == n, f"{path}: {len(rows)} usable {what}, need {n}"
    return rows, measured, skipped


def run_side(script: str, side: str, a, data: str, out: str, flags=(), settings=()) -> tuple[dict, float]:
    """One side of a side-by-side bench, in a fresh `script --child side` process: its JSON line and wall
    seconds. `settings`: the script's own flags that the child must see too."""
    cmd = [
        sys.executable,
        script,
        "--child",
        side,
        "--model",
        a.model,
        "--data",
        data,
        "--out",
        out,
        "--steps",
        str(a.steps),
        "--seed",
        str(a.seed),
        "--max-length",
        str(a.max_length),
        *settings,
        "--flags",
        json.dumps(list(flags)),
    ]
    return run_child(cmd, f"{side} child")


def stage_timer(stages: list[dict], fn, stage):
    """fn, timed into the current step's entry of `stages` (stage: a name, or a function of no arguments giving
    one or None for an untimed call); calls before the first step are not counted."""

    def timed(*args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            name = stage() if callable(stage) else stage
            if stages and name:
                stages[-1][name] += time.perf_counter() - t

    return timed


def step_timer(step_s: list[float]):
    """A TrainerCallback that appends each optimizer step's wall seconds (on_step_begin to on_step_end) to step_s."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - self.t0)

    return Timer()


def peft_lora(lora: dict):
    """PEFT's LoraConfig for the TRL side: `lora` (r, alpha, dropout) on all linear layers of the blocks."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def count_batches(trainer) -> tuple[list[int], list[int]]:
    """Wraps the trainer's collator: the non-padding tokens and the examples of each batch actually trained."""
    collate, tokens, sizes = trainer.data_collator, [], []

    def counting_collator(examples):
        batch = collate(examples)
        sizes.append(len(examples))
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    return tokens, sizes


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(
    name: str, step_s: list[float], step_tokens: list[int], w: int, maxrss_kib: int, pairs_per_step: int = 0, **extra
) -> dict:
    """One side's table row: the steps after the first w timed, tokens/s over them (and pairs/s, given
    pairs_per_step), and its peak RSS."""
    timed = sorted(step_s[w:])
    secs, toks = sum(step_s[w:]), sum(step_tokens[w:])
    pairs = (
        dict(timed_pairs=pairs_per_step * len(timed), pairs_per_s=pairs_per_step * len(timed) / secs)
        if pairs_per_step
        else {}
    )
    return dict(
        side=name,
        steps_timed=len(timed),
        **pairs,
        timed_tokens=toks,
        timed_s=secs,
        tokens_per_s=toks / secs,
        s_per_step=secs / len(timed),
        s_per_step_median=timed[len(timed) // 2],
        step_s_spread=timed[-1] / timed[0],
        peak_rss_mb=maxrss_kib / 1024,
        step_s=step_s,
        step_tokens=step_tokens,
        **extra,
    )


def tunesmith_row(
    script: str,
    command: str,
    name: str,
    a,
    data: str,
    tmp: str,
    flags: list[str],
    step_tokens: list[int],
    settings=(),
    pairs_per_step: int = 0,
    **extra,
) -> tuple[dict, list[dict]]:
    """Runs `tunesmith <command>` as the side `name` (a row of the table) with `flags`: its row, and its first
    a.steps step records (metrics.jsonl) for the script's own checks. `tokens_match_harness`: tunesmith
    trained the tokens the harness counted, step by step."""
    out = os.path.join(tmp, name.replace(" ", "_"))
    res, wall = run_side(script, "tunesmith", a, data, out, flags, settings)
    if res["rc"] != 0:
        sys.exit(f"tunesmith {command} exited {res['rc']}")
    recs = [r for r in read_jsonl(Path(out, "metrics.jsonl")) if "step_s" in r and "tokens" in r][: a.steps]
    if len(recs) < a.steps:
        sys.exit(f"{name}: {len(recs)} step records with step_s and tokens in metrics.jsonl, expected {a.steps}")
    own = [int(r["tokens"]) for r in recs]
    side = row(
        name,
        [float(r["step_s"]) for r in recs],
        step_tokens,
        a.warmup_steps,
        res["maxrss_kib"],
        pairs_per_step,
        tunesmith_reported_tokens=own,
        tokens_match_harness=own == step_tokens,
        losses=[r.get("loss") for r in recs],
        child_wall_s=wall,
        threads=res["threads"],
        rss_trace=res.get("rss_trace"),
        **extra,
    )
    return side, recs


def tunesmith_layout(rows: list[dict], seed: int, batch: int) -> list[dict] | None:
    """tunesmith always draws each epoch in a seeded random order; lay the rows out so that its step k
    trains rows k*batch .. (k+1)*batch-1 of the file order, like TRL's sequential sampler (None if it can't be
    done)."""
    try:
        from tunesmith.train.order import step_indices
    except ImportError:
        return None
    laid: list = [None] * len(rows)
    for k in range(len(rows) // batch):
        for j, pos in enumerate(step_indices(len(rows), batch, seed, k)):
            laid[pos] = rows[k * batch + j]
    return laid if all(r is not None for r in laid) else None


def tunesmith_data(rows: list[dict], seed: int, batch: int, tmp: str, notes: list[str]) -> str:
    """tunesmith's copy of the training rows, laid out in tmp (a note when the order can't be aligned)."""
    laid = tunesmith_layout(rows, seed, batch)
    if laid is None:
        laid = rows
        notes.append("could not align tunesmith's (seeded, shuffled) data order with file order")
    path = os.path.join(tmp, "train_tunesmith.jsonl")
    write_jsonl(path, laid)
    return path


def tunesmith_variants(extra: str) -> list[tuple[str, list[str]]]:
    """The tunesmith rows: its defaults, then one per comma-separated --extra flag."""
    return [("tunesmith", [])] + [(f"tunesmith {f}", [f]) for f in extra.split(",") if f]


def add_ratios(table: list[dict], speed: str, notes: list[str]) -> None:
    """Each row's `speed` and peak RSS as ratios to the first (TRL's) row, and a note on an unsteady row."""
    base = table[0]
    for r in table:
        r[f"{speed}_ratio"] = r[speed] / base[speed]
        r["peak_rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        if r["step_s_spread"] > 1.5:
            notes.append(
                f"{r['side']}: slowest timed step {r['step_s_spread']:.1f}x the fastest: a busy machine? "
                "compare the median s/step, or rerun"
            )


def print_table(table: list[dict], side_width: int, speed: str) -> None:
    """The rows under a header; `speed` (tokens_per_s, or pairs_per_s: then a pairs/s column too) is the ratio
    to TRL shown."""
    ratio = "ratio pairs/s" if speed == "pairs_per_s" else "ratio tok/s"
    pairs = [("pairs/s", "pairs_per_s", 8, ".3f")] if speed == "pairs_per_s" else []
    columns = [
        ("steps timed", "steps_timed", 11, ""),
        *pairs,
        ("tokens/s", "tokens_per_s", 9, ".1f"),
        ("s/step", "s_per_step", 7, ".2f"),
        ("(median)", "s_per_step_median", 8, ".2f"),
        ("peak RSS MB", "peak_rss_mb", 11, ".0f"),
        (ratio, f"{speed}_ratio", len(ratio), ".2f"),
        ("ratio RSS", "peak_rss_ratio", 9, ".2f"),
    ]
    print("\n" + " ".join([f"{'side':<{side_width}}"] + [f"{title:>{w}}" for title, _, w, _ in columns]))
    for r in table:
        print(" ".join([f"{r['side']:<{side_width}}"] + [f"{r[key]:>{w}{fmt}}" for _, key, w, fmt in columns]))


def side_by_side_result(bench: str, vers: dict, settings: dict, table: list[dict], speed: str, **fields) -> dict:
    """What sft_vs_trl.py and dpo_vs_trl.py write: the run, `fields`, the rows, and the tunesmith row's
    `speed` and peak RSS ratios to TRL."""
    ts = next((r for r in table if r["side"] == "tunesmith"), None)
    return dict(
        bench=bench,
        date=datetime.date.today().isoformat(),
        host=socket.gethostname(),
        command=" ".join([Path(sys.executable).name] + sys.argv),
        settings=settings,
        versions=vers,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        **fields,
        rows=table,
        **{f"{speed}_ratio": ts and ts[f"{speed}_ratio"]},
        peak_rss_ratio=ts and ts["peak_rss_ratio"],
    )


def versions() -> dict:
    """The versions both sides ran with (fails early when the baseline, trl, is not installed)."""
    import peft
    import torch
    import transformers
    import trl

    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        peft=peft.__version__,
        trl=trl.__version__,
    )


def write_result(result: dict, results_dir: str, suffix: str = "") -> None:
    """bench/results/<bench>-<date>-<host><suffix>.json (or under results_dir)."""
    path = Path(results_dir).resolve() / f"{result['bench']}-{result['date']}-{result['host']}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def measure_peak(dtype_name: str = "float32", n: int = 4096, repeats: int = 5) -> dict:
    """The best FLOP/s of an n x n matmul in `dtype` over `repeats` timed runs (after one warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return dict(flops_per_s=best, dtype=dtype_name, n=n, repeats=repeats, threads=torch.get_num_threads())


def model_counts(model_dir: str, method: str) -> tuple[dict, object]:
    """The planner's parameter counts (LoRA r16 on all linear layers) and the model's shape."""
    from tunesmith.planner import parameter_counts, parse_targets, resolve_shape

    shape, _ = resolve_shape(model_dir)
    return parameter_counts(shape, method, 16, parse_targets("all-linear")), shape


def sft_flops(c: dict, shape, n: int, m: int) -> float:
    """Model FLOPs of one SFT (LoRA/QLoRA) example of n tokens, m of them trained: the planner's per-token
    count at sequence length n and trained fraction m / n, times n."""
    from tunesmith.planner import flops_per_token

    return n * flops_per_token(shape, "lora", c, n, False, m / n)["model"]
