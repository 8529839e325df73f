"""`tunesmith plan`: what a run will take (parameters, memory, FLOPs, time, cost), answered before it starts."""

from __future__ import annotations

import json


def register(sub) -> None:
    from tunesmith.plan import GPUS, SHAPES

    p = sub.add_parser("plan", help="parameters, memory, FLOPs, time and cost of a run, before running it",
                       description="Arithmetic on the model's shape, no download and no torch: total and trainable "
                                   "parameters; memory per GPU split into weights, gradients, AdamW state, "
                                   "activations, bf16 weight copies and the logits buffer; FLOPs per token and for "
                                   "the run; time at an MFU and cost. Formulas: the docstring of tunesmith/plan.py. "
                                   f"Built-in shapes: {', '.join(SHAPES)} (and smollm2-135m-instruct).")
    p.add_argument("--model", required=True, help="a built-in shape, a local Hugging Face directory or a config.json")
    p.add_argument("--method", required=True, choices=("full", "lora", "qlora"))
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument("--target", default="all-linear",
                   help="layers to adapt: all-linear, or a list such as q_proj,v_proj")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per (packed) row")
    p.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step (global)")
    p.add_argument("--micro-batch-size", type=int, help="rows per forward (default: --batch-size)")
    p.add_argument("--tokens", type=int, help="tokens the run trains on (all epochs)")
    p.add_argument("--data", help="SFT JSONL whose tokens to count (chars/4, or the model's tokenizer for a local dir)")
    p.add_argument("--epochs", type=int, help="passes over --data (default 1)")
    p.add_argument("--trained-fraction", type=float,
                   help="share of positions that carry a loss (default: from --data, else 1.0)")
    p.add_argument("--gpu", default="h100", choices=tuple(GPUS), help="the device (default h100)")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel processes (lora/qlora: each holds the whole model; full: FSDP2-sharded)")
    p.add_argument("--price-per-hour", type=float, help="USD per GPU-hour")
    p.add_argument("--mfu", type=float, help="fraction of peak reached (default 0.4; cpu: 1.0 of the measured peak)")
    p.add_argument("--peak-tflops", type=float, help="override the device's peak (cpu default: measured 0.095)")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="matmul precision (default bf16; cpu: fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="keep only layer inputs, recompute in backward")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.plan import format_plan, plan

    result = plan(args.model, args.method, lora_r=args.lora_r, target=args.target, seq_len=args.seq_len,
                  batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, tokens=args.tokens,
                  data=args.data, epochs=args.epochs, gpu=args.gpu, gpus=args.gpus,
                  price_per_hour=args.price_per_hour, mfu=args.mfu, peak_tflops=args.peak_tflops,
                  gradient_checkpointing=args.gradient_checkpointing, precision=args.precision,
                  trained_fraction=args.trained_fraction)
    print(json.dumps(result) if args.json else format_plan(result))
    return 0
