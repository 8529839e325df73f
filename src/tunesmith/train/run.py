"""The run scaffold every recipe shares: `start_run` -> the recipe's data -> `open_run` -> its own loop
(`begin_step` / `end_step`) -> `finish_run`.

    start_run:  processes (torchrun), device, precision, base directory, tokenizer
    open_run:   run directory + config.yaml, model (+ adapter), recipe-specific parts (`attach`),
                forgetting guard, FSDP sharding, optimizer + schedule, resume, metrics.jsonl
    end_step:   the cadence: evaluate / measure drift / log / checkpoint every N steps, budget stop
    finish_run: final evaluation, last checkpoint, saved adapter or model, run.json, report

What a recipe's loop does between `begin_step` and `end_step` is its own, top to bottom in its file.
Everything the terminal shows and every metrics row also go to `on_event` (the Python API's callback,
the service's job events).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from tqdm import tqdm

from tunesmith.atomic import atomic_write_text
from tunesmith.errors import ConfigError, Diverged, Interrupted, TunesmithError
from tunesmith.forgetting.guard import guard_start, guard_step, guard_summary, start_guard, stop_over_budget
from tunesmith.models import load_tokenizer, resolve_model_dir, select_device
from tunesmith.models.forward import unwrap
from tunesmith.models.integrity import run_summary
from tunesmith.models.kernels import kernels_description
from tunesmith.models.load import autocast_dtype, cpu_description, needs_remote_code
from tunesmith.planner import GIB, fitting_flags, plan_config
from tunesmith.report import write_report
from tunesmith.train.checkpoint import list_checkpoints
from tunesmith.train.distributed import (
    Dist,
    full_state,
    load_checkpoint_everywhere,
    save_checkpoint_on_main,
    shard_model,
    shut_down,
    start_processes,
)
from tunesmith.train.metrics import MetricsLog, NullLog, clean_record, read_metrics
from tunesmith.train.model_setup import build_trainable_model, check_row_layouts, save_trained
from tunesmith.train.rundir import open_run_dir, settle_run_dir
from tunesmith.train.schedule import build_optimizer, lr_multiplier, plan_steps, set_lr

if TYPE_CHECKING:
    from tunesmith.config.schema import RunConfig
    from tunesmith.recipes import Recipe

Event = dict[str, Any]
Say = Callable[[str], None]  # where a run's messages go: print, or nothing
OnEvent = Callable[[Event], None] | None  # the caller's callback for every message and metrics row
ConfigT = TypeVar("ConfigT", bound="RunConfig")  # the recipe's own config class: `Run[GRPOConfig]`


@dataclass
class RunResult:
    """What a finished run returns (and the Python API hands back)."""

    run_dir: Path
    output: Path  # adapter/, model/ or reward_model/
    steps: int
    final: dict[str, float]  # the last step's headline metrics
    eval: dict[str, float] | None  # held-out metrics at the end
    seconds: float
    model: torch.nn.Module  # the trained model, still in memory (PEFT-wrapped for lora/qlora)
    manifest: dict[str, Any] = field(default_factory=dict)  # run.json

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every row of metrics.jsonl, in order."""
        path = self.run_dir / "metrics.jsonl"
        return read_metrics(path) if path.is_file() else []


@dataclass
class Run(Generic[ConfigT]):
    cfg: ConfigT
    recipe: Recipe
    dist: Dist
    say: Callable[[str], None]
    progress: bool
    on_event: Callable[[Event], None] | None
    device: torch.device
    amp_dtype: torch.dtype | None
    model_dir: Path
    tokenizer: Any
    started: float = field(default_factory=time.time)
    run_dir: Path = Path()
    resume_from: Path | None = None
    model: Any = None
    trainable: int = 0
    total: int = 0
    guard: Any = None
    params: list[torch.nn.Parameter] = field(default_factory=list)
    optimizer: Any = None
    total_steps: int = 0
    warmup_steps: int = 0
    step: int = 0
    counters: dict[str, Any] = field(default_factory=dict)  # saved with each checkpoint (tokens_seen, ...)
    metrics: Any = None
    logs: list[Any] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)  # the last step's
    bar: Any = None
    stop_signal: int | None = None  # SIGINT or SIGTERM received: checkpoint at the end of this step and stop
    _t0: float = 0.0
    bad_in_row: int = 0  # steps in a row with a non-finite loss or gradient norm
    last_checkpoint: float = field(default_factory=time.monotonic)  # for --save-every-minutes
    _handlers: dict[int, Any] = field(default_factory=dict)

    # ---- speaking and logging ---------------------------------------------------------------
    def note(self, data: Any) -> None:
        """What preparing the data found: its notes (truncations, held-out splits) and warnings."""
        for line in data.notes:
            self.say(f"data: {line}")
        for line in data.warnings:
            self.say(f"warning: {line}")

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        if self.on_event is not None and self.dist.is_main:
            self.on_event({"type": "metrics", "data": clean_record(record)})

    def open_log(self, name: str) -> Any:
        """Another JSONL log in the run directory (samples.jsonl), cut back to the resumed step like metrics."""
        log = (
            MetricsLog(self.run_dir / name, self.step if self.resume_from else None) if self.dist.is_main else NullLog()
        )
        self.logs.append(log)
        return log

    def where(self) -> str:
        """The device part of a recipe's opening line: the device (a CPU's instruction set), precision, processes,
        and on CUDA whether Liger's kernels serve the loss and norms (models/kernels.py)."""
        d = self.dist
        kernels = (
            kernels_description(unwrap(self.model)) if self.device.type == "cuda" and self.model is not None else ""
        )
        return (
            (cpu_description() if self.device.type == "cpu" else self.device.type)
            + (f", autocast {self.amp_dtype}" if self.amp_dtype else ", fp32")
            + (f", {d.world} processes" + (" (FSDP)" if d.sharded else "") if d.active else "")
            + (f", {kernels}" if kernels else "")
        )

    # ---- the loop's cadence -----------------------------------------------------------------
    def begin(self, evaluate: Callable[[], dict[str, float]] | None = None) -> dict[str, float]:
        """Before the first step of a fresh run: step 0 of the eval and drift curves (`evaluate` when given);
        then training mode and the progress bar. Returns what was measured."""
        start: dict[str, float] = {}
        if self.step == 0:
            start = {**(evaluate() if evaluate else {}), **guard_start(self.guard)}
            if start:
                self.log({"step": 0, **start})
        self.model.train()
        self.bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True
        )
        return start

    def step_record(
        self, means: dict[str, float], lr: float, grad_norm: float, unit: str, n: int, n_train: int, **counts: int
    ) -> dict[str, Any]:
        """A step's metrics row: its means, lr and gradient norm, `counts`, and the epoch it reached, after `n`
        more `unit` (pairs, examples) seen: units seen / units in an epoch (`n_train`), fractional."""
        self.counters[f"{unit}_seen"] += n
        return {**means, "lr": lr, "grad_norm": grad_norm, **counts, "epoch": self.counters[f"{unit}_seen"] / n_train}

    def begin_step(self) -> float:
        """Start the clock and set this step's learning rate (warm-up, then the schedule's decay); returns it."""
        self._t0 = time.perf_counter()
        assert self.cfg.train.lr is not None  # filled by validate()
        lr = self.cfg.train.lr * lr_multiplier(self.step, self.total_steps, self.warmup_steps, self.cfg.train.schedule)
        set_lr(self.optimizer, lr)
        return lr

    def end_step(
        self,
        record: dict[str, Any],
        evaluate: Callable[[], dict[str, float]] | None = None,
        per_second: dict[str, float] | None = None,
        show: tuple[str, ...] = ("loss",),
    ) -> bool:
        """After the optimizer step: count it, then evaluate, measure drift, log and checkpoint when due.
        `per_second` {"tokens": n} adds tokens_per_s. True when the forgetting budget says stop."""
        self.step += 1
        t = self.cfg.train
        seconds = time.perf_counter() - self._t0
        record = {
            "step": self.step,
            **record,
            "step_s": seconds,
            **{f"{k}_per_s": v / seconds for k, v in (per_second or {}).items()},
        }
        if evaluate is not None and t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps:
            record.update(evaluate())
        self.check_finite(record)
        over_budget = guard_step(self.guard, self.model, self.step, self.total_steps, record)
        if self.step % t.log_every == 0 or "kl_to_base" in record or any(k.startswith("eval_") for k in record):
            self.log(record)
        self.record = record
        self.bar.set_postfix({k: f"{record[k]:.4f}" for k in show if k in record}, refresh=False)
        self.bar.update(1)
        if over_budget:
            return True
        if (self.checkpoint_due() and self.step < self.total_steps) or self.stop_signal is not None:
            self.checkpoint()
        if self.stop_signal is not None:
            self.stopped_by_signal()
        return False

    def check_finite(self, record: dict[str, Any]) -> None:
        """A step whose loss or gradient norm is NaN or infinite was skipped (optimizer_step leaves the weights):
        count it in `skipped_steps` and warn; --max-bad-steps of them in a row stop the run."""
        bad = [k for k in ("loss", "grad_norm") if isinstance(record.get(k), float) and not math.isfinite(record[k])]
        if not bad:
            self.bad_in_row = 0
            return
        self.bad_in_row += 1
        self.counters["skipped_steps"] += 1
        record["skipped_steps"] = self.counters["skipped_steps"]
        what = " and ".join(f"{k} {record[k]}" for k in bad)
        self.say(f"warning: step {self.step}: {what}: the update was skipped, the weights are unchanged")
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            self.log(record)
            self.close()
            kept = list_checkpoints(self.run_dir)
            raise Diverged(
                f"steps {self.step - self.bad_in_row + 1}-{self.step}: {self.bad_in_row} steps in a row had a NaN "
                f"or infinite {' / '.join(bad)} (--max-bad-steps {self.cfg.train.max_bad_steps}); stopped. "
                + (f"The last good weights are in {kept[-1]}. " if kept else "No checkpoint was saved. ")
                + "Lower --lr, check the data, or try --precision fp32"
            )

    def checkpoint_due(self) -> bool:
        """Every --save-every steps, and every --save-every-minutes of wall time (rank 0's clock decides, so
        that every process checkpoints at the same step)."""
        t = self.cfg.train
        if t.save_every and self.step % t.save_every == 0:
            return True
        if not t.save_every_minutes:
            return False
        late = time.monotonic() - self.last_checkpoint >= 60 * t.save_every_minutes
        return self.dist.sum(1.0 if late and self.dist.is_main else 0.0) > 0

    def catch_stop_signals(self) -> None:
        """Ctrl-C and SIGTERM (a preempted machine, `kill`, a service pausing the job) finish the step, save
        a checkpoint and stop, instead of losing the steps since the last checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread; a caller's thread keeps its own handling
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, as without this handler
            self.release_stop_signals()
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.say(f"{signal.Signals(signum).name}: finishing step {self.step + 1}, then saving a checkpoint")

    def release_stop_signals(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()

    def close(self) -> None:
        """Stop before the end: close the bar and logs, give back the signal handlers, end the process group."""
        self.bar.close()
        self.metrics.close()
        for log in self.logs:
            log.close()
        self.release_stop_signals()
        shut_down(self.dist)

    def stopped_by_signal(self) -> None:
        self.close()
        assert self.stop_signal is not None  # only called once a signal arrived
        name = signal.Signals(self.stop_signal).name
        raise Interrupted(
            f"{name}: stopped after step {self.step}, checkpoint saved in {self.run_dir}/checkpoints; "
            f"continue with: tunesmith {self.recipe.name} --out {self.run_dir} --resume",
            128 + int(self.stop_signal),
        )

    def checkpoint(self) -> None:
        keep = self.cfg.train.keep_checkpoints
        save_checkpoint_on_main(self.dist, self.run_dir, self.step, self.model, self.optimizer, self.counters, keep)
        self.last_checkpoint = time.monotonic()


def start_run(
    cfg: ConfigT,
    recipe: Recipe,
    say: Callable[[str], None] = print,
    progress: bool = True,
    on_event: Callable[[Event], None] | None = None,
) -> Run[ConfigT]:
    """Processes, device, precision, base directory and tokenizer: what a recipe needs to read its data."""
    dist = start_processes(cfg, recipe.name, recipe.shards_full)
    if not dist.is_main:  # rank 0 speaks and writes for all
        say, progress, on_event = (lambda s: None), False, None
    elif on_event is not None:
        say = _also_as_events(say, on_event)
    device = dist.device or select_device(cfg.device)
    model_dir = resolve_model_dir(cfg.model, cfg.trust_remote_code)
    if cfg.train.memory_check:
        check_memory(cfg, recipe.name, model_dir, device, dist.world if device.type == "cpu" else 1)
    return Run(
        cfg,
        recipe,
        dist,
        say,
        progress,
        on_event,
        device,
        autocast_dtype(cfg.train.precision, device),
        model_dir,
        load_tokenizer(model_dir),
    )


def free_memory(device: torch.device) -> int | None:
    """Bytes free for a run: the GPU's free memory, or on the CPU the kernel's MemAvailable (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg: Any, recipe: str, model_dir: Path, device: torch.device, processes: int) -> None:
    """Refuse, before the model loads, a run the planner says needs more than the device's free memory
    (`processes` runs on one machine's RAM), with the plan's breakdown and what would make it fit."""
    free = free_memory(device)
    if free is None:
        return
    try:
        shape_only = dataclasses.replace(cfg, model=str(model_dir), data=dataclasses.replace(cfg.data, train=None))
        tokens = None if cfg.train.max_steps else 1  # memory needs no token count, only a length the plan accepts
        planned = plan_config(shape_only, recipe, tokens=tokens, gpus=processes)
    except TunesmithError:
        return  # an architecture the planner has no shape for: nothing to compare
    parts = planned["memory_bytes"]
    need = parts["total"] * processes
    if need <= free:
        return
    breakdown = ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items() if k != "total" and v)
    hints = fitting_flags(cfg.method, cfg.train.gradient_checkpointing, cfg.train.micro_batch_size or 1)
    times = f", x{processes} processes" if processes > 1 else ""
    raise ConfigError(
        f"the run needs about {need / GIB:.1f} GiB ({breakdown} GiB{times}; `tunesmith plan` has the "
        f"formulas) and {device.type} has {free / GIB:.1f} GiB free: try "
        f"{', '.join(hints)}; or --no-memory-check to start anyway"
    )


def _also_as_events(say: Callable[[str], None], on_event: Callable[[Event], None]) -> Callable[[str], None]:
    def both(message: str) -> None:
        say(message)
        on_event({"type": "message", "message": message})

    return both


def open_run(run: Run[ConfigT], n_items: int, attach: Callable[[Run[ConfigT]], None] | None = None) -> None:
    """Run directory, model (+ adapter), `attach` (a recipe's own parts: a reward head, a precomputed
    reference, before the weights are sharded or resumed), forgetting guard, FSDP, optimizer and schedule
    over `n_items` examples, resume, metrics.jsonl."""
    cfg = run.cfg
    out = Path(str(cfg.out))  # validate() refuses a run without --out
    was_empty = not cfg.resume and not (out.is_dir() and any(out.iterdir()))
    run.run_dir, run.resume_from = open_run_dir(cfg, run.recipe.name, run.dist, run.say)
    try:
        build = build_trainable_model(cfg, run.model_dir, run.device, run.amp_dtype, run.say)
        run.model, run.trainable, run.total = build
        if needs_remote_code(run.model_dir):  # transformers' own architectures are tested (tests/families/)
            packing = getattr(getattr(cfg, "data", None), "packing", False)  # grpo, ppo: sampled rows, padded
            check_row_layouts(run.model, run.model_dir, packing, run.recipe.pair_rows)
        if attach is not None:
            attach(run)
        if getattr(cfg, "forgetting", None) is not None:
            run.guard = start_guard(cfg, run.model, run.tokenizer, run.model_dir, run.device, run.amp_dtype, run.say)
    except BaseException:
        if run.dist.is_main and not cfg.resume:
            settle_run_dir(run.run_dir, started=False, was_empty=was_empty)
        raise
    if run.dist.is_main and not cfg.resume:
        settle_run_dir(run.run_dir, started=True, was_empty=was_empty)
    shard_model(run.model, run.dist)  # full fine-tuning in several processes: FSDP2
    run.params = [p for p in run.model.parameters() if p.requires_grad]
    assert cfg.train.lr is not None  # filled by validate()
    run.optimizer = build_optimizer(run.params, cfg.train.lr, cfg.train.weight_decay)
    run.total_steps, run.warmup_steps, too_many = plan_steps(cfg.train, n_items)
    if too_many:
        run.say(f"warning: {too_many}")
    run.counters["skipped_steps"] = 0  # steps skipped for a NaN/inf loss or gradient norm (Run.check_finite)
    if run.resume_from is not None:
        state = load_checkpoint_everywhere(run.dist, run.resume_from, run.model, run.optimizer)
        run.step = state["step"]
        run.counters.update({k: state[k] for k in run.counters if k in state})
        run.say(f"resumed from {run.resume_from} at step {run.step}")
    run.metrics = (
        MetricsLog(run.run_dir / "metrics.jsonl", resume_step=run.step if run.resume_from else None)
        if run.dist.is_main
        else NullLog()
    )
    run.catch_stop_signals()


def save_output(run: Run[ConfigT]) -> Path:
    """adapter/ (lora, qlora) or model/ (full; under FSDP every process takes part in gathering it)."""
    whole = full_state(run.model)[0] if run.dist.sharded else None
    if not run.dist.is_main:
        return run.run_dir / ("adapter" if run.cfg.method in ("lora", "qlora") else "model")
    return save_trained(run.model, run.tokenizer, run.run_dir, run.cfg.method, run.model_dir, state_dict=whole)


def finish_run(
    run: Run[ConfigT],
    evaluate: Callable[[], dict[str, float]] | None = None,
    describe: Callable[[dict[str, float]], str] | None = None,
    manifest: dict[str, Any] | None = None,
    final_keys: tuple[str, ...] = (),
    save: Callable[[Run[ConfigT]], Path] = save_output,
) -> RunResult:
    """After the loop: put back the last weights within the forgetting budget if it stopped the run, the
    final evaluation, the last checkpoint (so `--resume --max-steps MORE` extends a finished run), the
    output, run.json and the report."""
    cfg = run.cfg
    run.release_stop_signals()
    run.bar.close()
    stop_over_budget(run.guard, run.model, run.metrics, run.step, run.say)
    final_eval = evaluate() if evaluate is not None else {}
    if final_eval:
        run.log({"step": run.step, **final_eval, "final": True})
        if describe is not None:
            run.say(describe(final_eval))
    run.metrics.close()
    for log in run.logs:
        log.close()
    run.checkpoint()
    output = save(run)
    seconds = time.time() - run.started
    final = {k: run.record[k] for k in final_keys if k in run.record}
    result = {
        "recipe": run.recipe.name,
        "method": cfg.method,
        "model": cfg.model,
        "model_dir": str(run.model_dir),
        "steps": run.step,
        **(manifest or {}),
        **run.counters,
        "final": final,
        "eval": final_eval or None,
        "trainable_params": run.trainable,
        "total_params": run.total,
        "processes": run.dist.world,
        "seconds": round(seconds, 2),
        "output": output.name,
    }
    if run.dist.is_main:
        result.update(base_checksum=run_summary(run.run_dir), **guard_summary(run.guard))
        atomic_write_text(run.run_dir / "run.json", json.dumps(result, indent=2) + "\n")
        run.say(write_report(run.run_dir, run.recipe.name))
        run.say(f"saved {output} ({run.step} steps, {seconds:.0f} s)")
    shut_down(run.dist)
    run.model.eval()
    return RunResult(run.run_dir, output, run.step, final, final_eval or None, seconds, run.model, result)
