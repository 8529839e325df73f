"""`tunesmith score`: read rewards back from a trained reward model (`tunesmith reward` trains one)."""

from __future__ import annotations

import json


def register(sub) -> None:
    s = sub.add_parser(
        "score",
        help="print a reward per row with a trained reward model",
        description='One JSON line per row: {"line", "reward"} for chat or prompt/completion rows '
        '(the last assistant reply is scored), {"line", "chosen", "rejected"} for '
        "preference rows; then a summary line on stderr.",
    )
    s.add_argument("--reward-model", required=True, help="a `tunesmith reward` run directory (or its reward_model/)")
    s.add_argument("--data", required=True, help="JSONL: chat, prompt/completion or preference rows")
    s.add_argument(
        "--kind",
        choices=("auto", "sft", "preference"),
        default="auto",
        help="row format (auto: preference if the first row has chosen/rejected keys)",
    )
    s.add_argument("--max-length", type=int, default=512, help="tokens per conversation (longer are truncated)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="auto")
    s.set_defaults(handler=score)


def _first_row_keys(path: str) -> set[str]:
    from pathlib import Path

    from tunesmith.data.formats import iter_json_lines
    from tunesmith.errors import DataError

    if not Path(path).is_file():
        raise DataError([f"{path}: no such file"])
    for _number, obj, problem in iter_json_lines(Path(path)):
        if problem is None and isinstance(obj, dict):
            return set(obj)
    return set()


def score(args) -> int:
    import sys

    from tunesmith.data.formats import load_sft_file
    from tunesmith.data.preference import COMMON_KEYS, OPENAI_KEYS
    from tunesmith.data.prepare import tokenize_pairs
    from tunesmith.data.templates import TokenizedExample, tokenize_conversations
    from tunesmith.errors import ConfigError
    from tunesmith.eval.reward import score_examples
    from tunesmith.models.reward import load_reward_model

    if args.max_length < 8 or args.batch_size < 1:
        raise ConfigError("--max-length must be >= 8 and --batch-size >= 1")
    kind = args.kind
    if kind == "auto":
        keys = _first_row_keys(args.data)
        kind = "preference" if keys & {*OPENAI_KEYS[1:], *COMMON_KEYS[1:]} else "sft"
    model, head, tokenizer = load_reward_model(args.reward_model, args.device)

    def cut(examples):  # a reward for every row: longer ones keep their first --max-length tokens, as in training
        return [
            TokenizedExample(e.input_ids[: args.max_length], e.labels[: args.max_length], e.where) for e in examples
        ]

    if kind == "preference":
        from tunesmith.data.preference import load_preference_file

        parsed = load_preference_file(args.data)
        pairs = tokenize_pairs(tokenizer, parsed.pairs)
        chosen = score_examples(model, head, cut([p.chosen for p in pairs]), tokenizer.pad_token_id, args.batch_size)
        rejected = score_examples(
            model, head, cut([p.rejected for p in pairs]), tokenizer.pad_token_id, args.batch_size
        )
        for pair, w, lose in zip(pairs, chosen, rejected):
            print(
                json.dumps(
                    {"line": int(pair.where.rsplit(":", 1)[1]), "chosen": round(w, 6), "rejected": round(lose, 6)}
                )
            )
        correct = sum(w > lose for w, lose in zip(chosen, rejected))
        print(
            f"{len(pairs)} pairs: the reward model prefers the chosen reply in {correct} "
            f"({correct / max(1, len(pairs)):.3f})",
            file=sys.stderr,
        )
        return 0
    convs = load_sft_file(args.data)
    examples = tokenize_conversations(tokenizer, convs)
    rewards = score_examples(model, head, cut(examples), tokenizer.pad_token_id, args.batch_size)
    for conv, r in zip(convs, rewards):
        print(json.dumps({"line": int(conv.where.rsplit(":", 1)[1]), "reward": round(r, 6)}))
    mean = sum(rewards) / max(1, len(rewards))
    print(f"{len(rewards)} rows: mean reward {mean:.4f}", file=sys.stderr)
    return 0
