"""The forgetting guard inside a training loop: measure drift every N steps, stop when over budget.

    start:   probe (bundled or --probe) -> base answers (cached) -> a subset of --probe-size prompts ->
             the base's own probe perplexity (the yardstick for --max-probe-ppl-increase)
    step N:  probe_perplexity, kl_to_base (forgetting.measure) into the step's metrics; within budget ->
             remember the trainable weights; over budget -> stop
    end:     over budget -> the last weights within budget become the result

The base is the same model with its adapters switched off (lora/qlora: no extra memory); full
fine-tuning keeps a frozen copy of the base for the measurement. With an adapter the base runs once, at the
start: its statistics on the probe (forgetting.measure.BaseStats) stand in for its pass at every later
measurement, which is then one forward, of the model being trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tunesmith.forgetting.measure import BaseStats, base_perplexity, base_statistics, measure_drift, shares_base_head
from tunesmith.forgetting.probe import base_answers, load_probe, probe_examples
from tunesmith.models import load_model


def spread_subset(n: int, size: int) -> list[int]:
    """`size` indices spread evenly over range(n) (all of them when size is 0 or >= n): a subset of
    a probe sorted by category keeps every category."""
    if size <= 0 or size >= n:
        return list(range(n))
    return [int(i * n / size) for i in range(size)]


class ForgettingGuard:
    def __init__(
        self,
        opts,
        model: torch.nn.Module,
        tokenizer,
        model_dir,
        method: str,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        say: Callable[[str], None] = print,
    ):
        self.opts, self.amp_dtype, self.say = opts, amp_dtype, say
        self.pad_id = tokenizer.pad_token_id
        items = load_probe(opts.probe)
        items = [items[i] for i in spread_subset(len(items), opts.probe_size)]
        answers = base_answers(items, model_dir, say=say)
        self.examples = probe_examples(tokenizer, items, answers)
        self.base: torch.nn.Module | None = None
        self.stats: list[BaseStats] | None = None
        if method == "full":
            self.base = load_model(model_dir, device).eval().requires_grad_(False)
            self.base_perplexity = base_perplexity(model, self.examples, self.pad_id, self.base, amp_dtype)
        elif shares_base_head(model):
            self.stats = base_statistics(model, self.examples, self.pad_id, amp_dtype)
            logp = torch.cat([s.logp for s in self.stats])
            self.base_perplexity = math.exp(-float(logp.double().mean()))
        else:
            self.base_perplexity = base_perplexity(model, self.examples, self.pad_id, None, amp_dtype)
        self.kept_step = 0
        self.kept = self._snapshot(model)
        self.stop_reason: str | None = None
        say(
            f"forgetting guard: {len(self.examples)} probe prompts, base probe perplexity "
            f"{self.base_perplexity:.3f}" + self._budget_text()
        )

    def _budget_text(self) -> str:
        parts = []
        if self.opts.max_kl is not None:
            parts.append(f"kl_to_base <= {self.opts.max_kl:g}")
        if self.opts.max_probe_ppl_increase is not None:
            parts.append(f"probe perplexity increase <= {self.opts.max_probe_ppl_increase:.1%}")
        return f"; budget: {', '.join(parts)}" if parts else ""

    @staticmethod
    def _snapshot(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.opts.every) and (step % self.opts.every == 0 or step == total_steps)

    def measure(self, model, step: int) -> dict[str, float]:
        """The drift of `model` now; checks the budget and remembers the weights when within it."""
        m = measure_drift(
            model, self.examples, self.pad_id, base=self.base, amp_dtype=self.amp_dtype, base_stats=self.stats
        )
        m["probe_ppl_increase"] = m["probe_perplexity"] / self.base_perplexity - 1.0
        over = []
        if self.opts.max_kl is not None and m["kl_to_base"] > self.opts.max_kl:
            over.append(f"kl_to_base {m['kl_to_base']:.4f} > {self.opts.max_kl:g}")
        if self.opts.max_probe_ppl_increase is not None and m["probe_ppl_increase"] > self.opts.max_probe_ppl_increase:
            over.append(f"probe perplexity +{m['probe_ppl_increase']:.2%} > +{self.opts.max_probe_ppl_increase:.2%}")
        if over:
            self.stop_reason = f"step {step}: " + "; ".join(over)
        else:
            self.kept_step, self.kept = step, self._snapshot(model)
        return m

    def start_record(self) -> dict[str, float]:
        """The step-0 point of the curves: the base itself."""
        return {"probe_perplexity": self.base_perplexity, "kl_to_base": 0.0, "probe_ppl_increase": 0.0}

    @torch.no_grad()
    def restore(self, model) -> None:
        """Put back the trainable weights of the last measurement within budget."""
        for name, p in model.named_parameters():
            if name in self.kept:
                p.copy_(self.kept[name].to(p.device))

    def summary(self) -> dict:
        return {
            "budget_exceeded": self.stop_reason,
            "kept_step": self.kept_step if self.stop_reason else None,
            "base_probe_perplexity": self.base_perplexity,
        }


def start_guard(cfg, model, tokenizer, model_dir, device, amp_dtype, say) -> ForgettingGuard | None:
    """The guard for a recipe's config, or None when --forgetting-every is 0."""
    if not cfg.forgetting.every:
        return None
    return ForgettingGuard(cfg.forgetting, model, tokenizer, model_dir, cfg.method, device, amp_dtype, say)


def stop_over_budget(guard: ForgettingGuard | None, model, metrics, step: int, say) -> None:
    """After the loop: if the budget stopped it, put back the last weights within budget and say so
    (terminal and metrics.jsonl)."""
    if guard is None or not guard.stop_reason:
        return
    guard.restore(model)
    metrics.write({"step": step, "budget_exceeded": guard.stop_reason, "kept_step": guard.kept_step})
    say(
        f"forgetting budget exceeded at {guard.stop_reason}; training stopped and the result is the model "
        f"as it was at step {guard.kept_step}, the last measurement within budget"
    )


def guard_start(guard: ForgettingGuard | None) -> dict[str, float]:
    """Step 0 of the drift curves (the base itself), or {} without a guard."""
    return guard.start_record() if guard is not None else {}


def guard_step(guard: ForgettingGuard | None, model, step: int, total_steps: int, record: dict) -> bool:
    """Measure into `record` when due; True when the budget is exceeded and training must stop."""
    if guard is None or not guard.due(step, total_steps):
        return False
    record.update(guard.measure(model, step))
    return guard.stop_reason is not None


def guard_summary(guard: ForgettingGuard | None) -> dict:
    """The run.json entry: {"forgetting": {...}}, or {} without a guard."""
    return {"forgetting": guard.summary()} if guard is not None else {}
