"""`tunesmith eval`: how far a tuned model has drifted from its base, and how it does on a task."""

from __future__ import annotations

import json

from tunesmith.api import evaluate
from tunesmith.forgetting.evaluate import format_result


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="measure forgetting (probe perplexity, KL to the base) and task metrics",
        description="Scores the model (with --adapter: the model plus that adapter) on the probe: the "
        "base's own greedy answers to general prompts (generated once, cached). "
        "kl_to_base is the mean per-token KL(base || tuned) over those answers: 0 for the "
        "base itself. With --data, also the task loss and, when every reference answer is "
        "a JSON object, json_valid and field accuracy of greedy answers.",
    )
    p.add_argument("--model", required=True, help="alias, local Hugging Face directory or .gguf file")
    p.add_argument("--adapter", help="a PEFT adapter directory over --model (the base is the adapter switched off)")
    p.add_argument("--base", help="the base to compare with when --model is itself fine-tuned (full fine-tuning)")
    p.add_argument(
        "--probe",
        help="probe prompts, JSONL (`prompt` or `messages`, optional `answer`); "
        "default: the bundled general-domain probe",
    )
    p.add_argument("--probe-size", type=int, default=0, help="measure N prompts spread over the probe (0: all)")
    p.add_argument("--data", help="task data (chat or prompt/completion JSONL) for task metrics")
    p.add_argument("--limit", type=int, help="use only the first N task examples")
    p.add_argument("--max-length", type=int, default=512, help="tokens per task example")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=run)


def run(args) -> int:
    result = evaluate(
        args.model,
        args.adapter,
        args.base,
        args.probe,
        args.probe_size,
        args.data,
        args.max_length,
        args.device,
        args.precision,
        args.limit,
        quiet=args.json,
    )
    print(json.dumps(result) if args.json else format_result(result))
    return 0
