"""`tunesmith adapters info|combine`: inspect an adapter, or weigh several into one."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.adapters.info import adapter_info, combine_adapters, format_info
from tunesmith.errors import ConfigError, OutputError


def register(sub) -> None:
    p = sub.add_parser("adapters", help="inspect adapters, or combine several into one")
    inner = p.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    i = inner.add_parser("info", help="method, rank, alpha, targets, size, base, data checksums, metrics")
    i.add_argument("dir", help="an adapter directory (e.g. RUN/adapter)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=info)
    c = inner.add_parser(
        "combine",
        help="a weighted combination of adapters on the same base (PEFT)",
        description="cat (default): ΔW = Σ w_i ΔW_i exactly, rank = Σ r_i; linear: A and B "
        "averaged (equal ranks; approximate); svd: Σ w_i ΔW_i re-factorised.",
    )
    c.add_argument("--model", required=True, help="the base the adapters were trained on")
    c.add_argument("--adapter", action="append", required=True, help="adapter directory (repeatable)")
    c.add_argument("--weights", required=True, help="comma-separated, one per --adapter, e.g. 0.7,0.3")
    c.add_argument("--combination", choices=("cat", "linear", "svd"), default="cat")
    c.add_argument("--out", required=True, help="output adapter directory")
    c.set_defaults(handler=combine)


def info(args) -> int:
    result = adapter_info(args.dir)
    print(json.dumps(result, indent=2) if args.json else format_info(result))
    return 0


def combine(args) -> int:
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {args.weights}: comma-separated numbers, one per --adapter") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out}: exists and is not empty")
    result = combine_adapters(args.model, args.adapter, weights, out, args.combination)
    print(f"wrote {result['out']}: {result['combination']} of {result['adapters']}")
    return 0
