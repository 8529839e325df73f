"""Sampling and scoring of one demo-sized GRPO micro-batch: each prompt pre-filled once against K times, and
scored in padded rows against once per group (issue 20, requirements 1 and 2).

Run from the repository root (CPU, about a minute once the embedded model is cached):

    PYTHONPATH=src:. python bench/grpo_scoring.py [--rounds 2] [--precision auto|fp32|bf16]

What `tunesmith grpo` computes after sampling, on SmolLM2-135M-Instruct with a LoRA adapter (r16, all
linear layers), as the GRPO demo runs it: 4 of the demo's extraction prompts (134-149 tokens) × 4
completions of 24, 40, 56 and 64 random tokens, at temperature 0.7. Timed: the reference log-probs (the
adapter switched off, no gradient) and the policy's forward + backward, in each layout of `collate_groups`:
padded rows (every completion repeats its prompt) and shared (the prompt once, its K completions continuing
it). Both layouts are timed in alternation, `--rounds` times after one untimed warm-up each; the best round
counts. The log-probs of the two layouts are compared as well. Sampling (64 new tokens, the same 4 prompts,
K = 4, one seed) is timed the same way with the prompt pre-filled once and its KV cache repeated for the K
samples (decoded together, each row leaving the batch at its end of turn), and with `generate`'s own K
pre-fills (every row decoded to the longest), and the two draws compared (`--sampling-data`: other
prompts for this part). Writes results/grpo_scoring-<date>-<host>-<precision>[-<sampling data name>].json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import write_result

K, COMPLETION_TOKENS, PROMPTS, TEMPERATURE = 4, (24, 40, 56, 64), 4, 0.7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--results", default=str(Path(__file__).with_name("results")))
    ap.add_argument(
        "--sampling-data",
        help="JSONL whose first 4 rows' `prompt` (or `messages` but the last) are sampled instead of the demo's "
        "(e.g. src/tunesmith/demo/data/tone_train.jsonl: replies that end before 64 tokens)",
    )
    a = ap.parse_args()

    from tunesmith.config.schema import GRPOConfig
    from tunesmith.data.packing import collate_groups
    from tunesmith.demo import grpo as demo_grpo
    from tunesmith.demo.run import TRAIN_FILE
    from tunesmith.models import load_tokenizer, resolve_model_dir
    from tunesmith.models.forward import adapter_off, batch_token_logps
    from tunesmith.models.load import autocast_dtype, cpu_description
    from tunesmith.rollout.sampling import completion_example, prompt_ids, sample_completions
    from tunesmith.train.model_setup import build_trainable_model

    device = torch.device("cpu")
    amp = autocast_dtype(a.precision, device)
    model_dir = resolve_model_dir("smollm2-135m-instruct")
    tokenizer = load_tokenizer(model_dir)
    model, _, _ = build_trainable_model(GRPOConfig(model=str(model_dir), method="lora"), model_dir, device, amp, print)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        demo_grpo.write_prompts(TRAIN_FILE, prompts, PROMPTS)
        rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    g = torch.Generator().manual_seed(0)
    examples = []
    for row in rows:
        p = prompt_ids(tokenizer, row["messages"], 256)
        for n in COMPLETION_TOKENS:
            examples.append(completion_example(p, torch.randint(3, 40000, (n,), generator=g).tolist(), "bench"))

    def score(share: bool) -> tuple[dict, torch.Tensor]:
        batch = collate_groups(examples, K, tokenizer.pad_token_id, share)
        t0 = time.perf_counter()
        with torch.no_grad(), adapter_off(model):
            batch_token_logps(model, batch, amp, TEMPERATURE, len(examples))
        t1 = time.perf_counter()
        logp, mask, _ = batch_token_logps(model, batch, amp, TEMPERATURE, len(examples))
        (logp * mask).sum().backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        times = {"tokens": batch.input_ids.numel(), "reference_s": t1 - t0, "policy_s": t2 - t1, "total_s": t2 - t0}
        return times, logp.detach()

    sampled = rows
    if a.sampling_data:
        lines = Path(a.sampling_data).read_text().splitlines()[:PROMPTS]
        sampled = [{"messages": r.get("prompt") or r["messages"][:-1]} for r in map(json.loads, lines)]
    prompts_ids = [prompt_ids(tokenizer, row["messages"], 256) for row in sampled]

    def sample(once: bool) -> tuple[dict, list[list[int]]]:
        model.eval()  # as the recipe samples: no dropout
        t0 = time.perf_counter()
        drawn = sample_completions(
            model, prompts_ids, K, TEMPERATURE, 1.0, 64, tokenizer.pad_token_id, tokenizer.eos_token_id, amp, 0, once
        )
        model.train()
        return {"sampling_s": time.perf_counter() - t0, "new_tokens": sum(map(len, drawn))}, drawn

    best: dict[str, dict] = {}
    logps: dict[str, torch.Tensor] = {}
    draws: dict[str, list[list[int]]] = {}
    for rnd in range(a.rounds + 1):
        for name, once in (("pre-fill K times", False), ("pre-fill once", True)):
            times, draws[name] = sample(once)
            if rnd > 0 and (name not in best or times["sampling_s"] < best[name]["sampling_s"]):
                best[name] = times
    same = sum(x == y for x, y in zip(draws["pre-fill K times"], draws["pre-fill once"]))
    for rnd in range(a.rounds + 1):
        for name, share in (("padded", False), ("shared", True)):
            times, logps[name] = score(share)
            if rnd > 0 and (name not in best or times["total_s"] < best[name]["total_s"]):
                best[name] = times
    for name in ("pre-fill K times", "pre-fill once"):
        print(f"sampling, {name:16s} {best[name]['sampling_s']:.2f} s ({best[name]['new_tokens']} new tokens)")
    print(f"the same completions for the same seed: {same}/{len(draws['pre-fill once'])}")
    for name in ("padded", "shared"):
        t = best[name]
        print(
            f"{name:7s} tokens {t['tokens']:5d}  reference {t['reference_s']:.2f} s  "
            f"policy fwd+bwd {t['policy_s']:.2f} s  total {t['total_s']:.2f} s"
        )
    speedup = best["padded"]["total_s"] / best["shared"]["total_s"]
    diff = float((logps["padded"] - logps["shared"]).abs().max())
    print(f"shared prompt: {speedup:.2f}x faster; max |log-prob difference| {diff:.1e}")
    write_result(
        {
            "bench": "grpo_scoring",
            "date": datetime.date.today().isoformat(),
            "host": socket.gethostname(),
            "device": cpu_description(),
            "precision": str(amp) if amp else "fp32",
            "prompts": PROMPTS,
            "group_size": K,
            "completion_tokens": COMPLETION_TOKENS,
            "rounds": a.rounds,
            "layouts": {name: best[name] for name in ("padded", "shared")},
            "sampling": {name: best[name] for name in ("pre-fill K times", "pre-fill once")},
            "sampling_prompts": a.sampling_data or "the demo's extraction prompts",
            "same_completions": same,
            "speedup": speedup,
            "max_logp_diff": diff,
        },
        a.results,
        f"-{str(amp).removeprefix('torch.') if amp else 'fp32'}{'-' + Path(a.sampling_data).stem if a.sampling_data else ''}",
    )


if __name__ == "__main__":
    main()
