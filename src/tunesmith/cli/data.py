"""`tunesmith data validate`: check a data file before spending compute on it."""

from __future__ import annotations

from collections import Counter

from tunesmith.data.formats import read_sft_file
from tunesmith.data.preference import read_preference_file
from tunesmith.data.templates import tokenize_conversations


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect and validate training data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    v = dsub.add_parser("validate", help="counts, token-length statistics and every malformed row")
    v.add_argument("file")
    v.add_argument(
        "--kind",
        choices=("sft", "preference"),
        default="sft",
        help="sft: chat or prompt/completion rows; preference: chosen/rejected pairs (dpo)",
    )
    v.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer and chat template to use")
    v.add_argument("--max-length", type=int, default=512)
    v.add_argument("--train-on-prompt", action="store_true", help="(sft) count every token as trained")
    v.set_defaults(handler=validate)


def _length_lines(label: str, lengths: list[int], max_length: int) -> list[str]:
    from tunesmith.data.prepare import length_stats  # heavy: torch; deferred for CLI start-up

    s = length_stats(lengths)
    over = sum(n > max_length for n in lengths)
    return [
        f"  {label}: min {s['min']}, median {s['median']:g}, p95 {s['p95']}, max {s['max']}; "
        f"over --max-length {max_length}: {over}"
    ]


def validate(args) -> int:
    return validate_preference(args) if args.kind == "preference" else validate_sft(args)


def validate_preference(args) -> int:
    from tunesmith.data.prepare import tokenize_pairs  # heavy: torch; deferred for CLI start-up
    from tunesmith.models import load_tokenizer, resolve_model_dir

    parsed = read_preference_file(args.file)
    pairs = parsed.pairs
    print(f"{parsed.path}: {len(pairs)} valid pair(s), {len(parsed.problems)} problem(s)")
    if parsed.identical:
        lines = ", ".join(map(str, parsed.identical_lines[:10])) + (", ..." if parsed.identical > 10 else "")
        print(f"warning: {parsed.identical} pair(s) with identical chosen and rejected will be dropped (line {lines})")
    if pairs:
        multi = sum(1 for p in pairs if sum(m["role"] == "user" for m in p.prompt) > 1)
        system = sum(1 for p in pairs if p.prompt[0]["role"] == "system")
        print(f"  prompts: {system} with a system turn, {multi} multi-turn")
        tokenizer = load_tokenizer(resolve_model_dir(args.model))
        tokenized = tokenize_pairs(tokenizer, pairs)
        for label, side in (("prompt + chosen tokens", "chosen"), ("prompt + rejected tokens", "rejected")):
            for line in _length_lines(label, [len(getattr(t, side).input_ids) for t in tokenized], args.max_length):
                print(line)
        print(
            f"  completion tokens: chosen {sum(t.chosen.num_trained for t in tokenized):,}, "
            f"rejected {sum(t.rejected.num_trained for t in tokenized):,}"
        )
    for problem in parsed.problems:
        print(problem)
    return 2 if parsed.problems else 0


def validate_sft(args) -> int:
    from tunesmith.data.prepare import length_stats  # heavy: torch; deferred for CLI start-up
    from tunesmith.models import load_tokenizer, resolve_model_dir

    parsed = read_sft_file(args.file)
    rows = parsed.rows
    roles = Counter(m["role"] for r in rows for m in r.messages)
    untrained = sum(1 for r in rows for m in r.messages if m["role"] == "assistant" and not m["weight"])
    multi = sum(1 for r in rows if sum(m["role"] == "assistant" for m in r.messages) > 1)
    print(f"{parsed.path}: {len(rows)} valid example(s), {len(parsed.problems)} problem(s)")
    if rows:
        print(
            f"  messages: {roles['system']} system, {roles['user']} user, {roles['assistant']} assistant "
            f"({untrained} with weight 0); {multi} multi-turn example(s)"
        )
        tokenizer = load_tokenizer(resolve_model_dir(args.model))
        examples = tokenize_conversations(tokenizer, rows, args.train_on_prompt)
        lengths = [len(e.input_ids) for e in examples]
        trained = [e.num_trained for e in examples]
        s = length_stats(lengths)
        over = sum(n > args.max_length for n in lengths)
        print(
            f"  tokens per example: min {s['min']}, median {s['median']:g}, p95 {s['p95']}, max {s['max']}; "
            f"total {sum(lengths):,} ({sum(trained):,} trained)"
        )
        print(
            f"  over --max-length {args.max_length}: {over} example(s) (truncated by default, "
            f"or dropped with --overlength drop)"
        )
    for problem in parsed.problems:
        print(problem)
    return 2 if parsed.problems else 0
