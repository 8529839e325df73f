"""Where one SFT LoRA step spends its time: torch.profiler over tunesmith's own forward + backward.

Run from the repository root (CPU, about a minute):

    PYTHONPATH=src python bench/profile_sft_step.py [--max-length 128] [--compile] [--no-shared-prefix] [--rows 25] [--bf16] [--by-shape]
                                                  [--data FILE] [--saved]

Builds what `tunesmith sft` trains in bench/run.py's SFT job: SmolLM2-135M-Instruct in fp32 (per-example
attention), PEFT LoRA r16 / alpha 32 / dropout 0 on all linear layers, the first 8 examples of the demo's
support data (--data: another file's) that keep part of their reply when cut to --max-length, loss on the assistant replies,
packed as `tunesmith sft` packs them (their shared system prompt once; --no-shared-prefix: once per
example). It runs two untimed steps (the compile, with --compile), times three,
then profiles one and prints the operators by self CPU time, and the share of the step that `aten::mm`
takes with its achieved GFLOP/s against a 4096² fp32 matmul measured here. `--saved` first counts what
one forward keeps for backward (the activations, without the weights it saves by reference).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--data", default=str(ROOT / "src/tunesmith/demo/data/support_train.jsonl"), help="SFT JSONL")
    ap.add_argument("--compile", action="store_true", help="compile the decoder layers as --compile does")
    ap.add_argument("--rows", type=int, default=25, help="operators to list")
    ap.add_argument("--by-shape", action="store_true", help="also list the operators by input shape")
    ap.add_argument(
        "--saved", action="store_true", help="also count the activations autograd keeps for backward (MB, MB/token)"
    )
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, as precision auto picks on AMX")
    ap.add_argument(
        "--no-shared-prefix",
        dest="shared_prefix",
        action="store_false",
        help="compute the system prompt once per example, not once per step",
    )
    a = ap.parse_args()

    from tunesmith.adapters.lora import apply_lora
    from tunesmith.config.schema import LoraConfig
    from tunesmith.data.formats import load_sft_file
    from tunesmith.data.packing import collate
    from tunesmith.data.templates import tokenize_conversations
    from tunesmith.models import load_model, load_tokenizer, resolve_model_dir
    from tunesmith.models.attention import packs_flat
    from tunesmith.models.forward import batch_nll_sum
    from tunesmith.train.model_setup import compile_layers

    model_dir = resolve_model_dir("smollm2-135m-instruct")
    tokenizer = load_tokenizer(model_dir)
    torch.manual_seed(0)
    model = apply_lora(
        load_model(model_dir, torch.device("cpu")), LoraConfig(r=16, alpha=32, dropout=0.0, target="all-linear")
    )
    if a.compile:
        compile_layers(model)
    model.train()
    examples = []
    for e in tokenize_conversations(tokenizer, load_sft_file(Path(a.data))):
        e.input_ids, e.labels = e.input_ids[: a.max_length], e.labels[: a.max_length]  # --overlength truncate
        if any(t != -100 for t in e.labels[1:]) and len(examples) < 8:  # as the bench: rows left with a reply
            examples.append(e)
    flat = packs_flat(model)
    batch = collate(examples, True, a.max_length, tokenizer.pad_token_id, flat, flat and a.shared_prefix)

    def step() -> None:
        batch_nll_sum(model, batch, torch.bfloat16 if a.bf16 else None).backward()

    if a.saved:
        print(json.dumps(saved_activations(model, batch), indent=1))
    for _ in range(2):
        step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    if a.by_shape:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=a.rows))
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows))
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm") / 1e6
    from harness import measure_peak, model_counts, sft_flops  # bench/run.py's peak and FLOP count

    peak = measure_peak()["flops_per_s"]
    counts, shape = model_counts(str(model_dir), "lora")
    needed = sum(sft_flops(counts, shape, len(e.input_ids), sum(t != -100 for t in e.labels[1:])) for e in examples)
    if batch.input_ids.numel() < batch.num_tokens:  # a shared prefix ran once: its other copies are not work done
        from tunesmith.data.packing import prefix_groups, trained_from

        groups = prefix_groups([e.input_ids for e in examples], [trained_from(e) for e in examples])
        needed -= sum((len(m) - 1) * sft_flops(counts, shape, s, 0) for s, m in groups if len(m) > 1)
    n, m = batch.num_tokens, batch.num_targets
    print(
        json.dumps(
            {
                "shape": list(batch.input_ids.shape),
                "tokens": n,
                "trained": m,
                "compile": a.compile,
                "bf16": a.bf16,
                "shared_prefix": a.shared_prefix,
                "step_s": [round(t, 3) for t in times],
                "profiled_self_cpu_s": round(total, 3),
                "mm_share": round(mm / total, 3),
                "mm_gflops_per_s_if_all_model_flops": round(needed / mm / 1e9, 1),
                "matmul_peak_gflops_per_s": round(peak / 1e9, 1),
                "mfu": round(needed / min(times) / peak, 3),
            },
            indent=1,
        )
    )


def saved_activations(model, batch) -> dict:
    """What one forward keeps for backward: the distinct storages autograd saves (saved_tensors_hooks),
    less the model's own weights, which it saves by reference."""
    from tunesmith.models.forward import batch_nll_sum

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = batch_nll_sum(model, batch)
    del loss
    mb = sum(seen.values()) / 2**20
    return {
        "saved_activations_mb": round(mb, 1),
        "row_tokens": batch.input_ids.numel(),
        "mb_per_token": round(mb / batch.input_ids.numel(), 3),
    }


if __name__ == "__main__":
    main()
