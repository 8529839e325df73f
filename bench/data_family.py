"""The short-data family (issue 20): SFT chats and DPO pairs without a long shared prompt, built from the demo's
tone data, for `bench/family.py`.

Not a benchmark (`python bench/data_family.py sft multiturn 96 out.jsonl` writes one dataset). Each dataset
is a pure function of its seed and the demo data (customer messages, a good and a bad reply to each),
written as JSONL in the formats tunesmith and TRL both read:

  short       one user message, one reply, no system prompt of its own (the model's chat template may add
              its default one, as it would for a user's data): ~60-100 tokens.
  mixed       lengths spread log-uniformly over ~30-500 tokens: short openers ("Hi") and long replies and
              pasted messages made of several customers' text, cut at a word to the drawn length.
  multiturn   2-4 user/assistant exchanges per chat (loss on every reply; DPO: the earlier exchanges are the
              prompt, the pair is the last reply).

DPO pairs of each kind use the demo's chosen and rejected replies to the same customer message.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TONE = ROOT / "src/tunesmith/demo/data/tone_train.jsonl"
KINDS = ("short", "mixed", "multiturn")
OPENERS = ["Hi", "Hello?", "Thanks!", "Is anyone there?", "Order status please", "Help"]
SHORT_REPLIES = ["Hello! How can I help you today?", "You're welcome!", "Yes, I'm here. What can I do for you?"]


def _tone() -> list[tuple[str, str, str]]:
    """(customer message, chosen reply, rejected reply) for each row of the demo's tone data."""
    out = []
    for line in TONE.read_text().splitlines():
        r = json.loads(line)
        out.append((r["prompt"][-1]["content"], r["chosen"], r["rejected"]))
    return out


def _words(texts: list[str], n_tokens: int, count) -> str:
    """The words of `texts` joined, cut at the last word that keeps `count(text)` within n_tokens."""
    words = " ".join(texts).split()
    lo, hi = 1, len(words)
    while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def sft_rows(kind: str, n: int, seed: int, count) -> list[dict]:
    """n chats of `kind` ({"messages": [...]}); `count(text)` is a text's token count (the model's tokenizer),
    used by `mixed` to cut messages to the drawn length."""
    rng, tone = random.Random(seed), _tone()
    pick = lambda: tone[rng.randrange(len(tone))]  # noqa: E731
    rows = []
    for _ in range(n):
        if kind == "short":
            user, good, _ = pick()
            msgs = [dict(role="user", content=user), dict(role="assistant", content=good)]
        elif kind == "mixed":
            total = math.exp(rng.uniform(math.log(30), math.log(500)))
            if total < 60:  # the template and a default system prompt alone are ~30 tokens
                msgs = [
                    dict(role="user", content=rng.choice(OPENERS)),
                    dict(role="assistant", content=rng.choice(SHORT_REPLIES)),
                ]
            else:
                user_share = rng.uniform(0.2, 0.7)  # a pasted message, or a long answer
                user = _words([pick()[0] for _ in range(12)], max(8, int(total * user_share) - 30), count)
                good = _words([pick()[1] for _ in range(12)], max(8, int(total * (1 - user_share))), count)
                msgs = [dict(role="user", content=user), dict(role="assistant", content=good)]
        elif kind == "multiturn":
            msgs = []
            for _ in range(rng.randint(2, 4)):
                user, good, _ = pick()
                msgs += [dict(role="user", content=user), dict(role="assistant", content=good)]
        else:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        rows.append(dict(messages=msgs))
    return rows


def dpo_rows(kind: str, n: int, seed: int, count) -> list[dict]:
    """n preference pairs of `kind` ({"prompt": [...], "chosen": str, "rejected": str}): the chats of
    sft_rows(kind) with the last reply replaced by a demo pair's chosen and rejected replies."""
    rng, tone = random.Random(seed + 1), _tone()
    rows = []
    for chat in sft_rows(kind, n, seed, count):
        user, good, bad = tone[rng.randrange(len(tone))]
        prompt = chat["messages"][:-1]
        if kind == "mixed" and rng.random() < 0.5:  # long replies on both sides, as long as the chat's own
            n_tok = max(8, count(chat["messages"][-1]["content"]))
            extra = [tone[rng.randrange(len(tone))] for _ in range(8)]
            good = _words([good] + [e[1] for e in extra], n_tok, count)
            bad = _words([bad] + [e[2] for e in extra], n_tok, count)
        elif kind != "mixed":
            prompt = prompt[:-1] + [dict(role="user", content=user)]
        rows.append(dict(prompt=prompt, chosen=good, rejected=bad))
    return rows


def write(path: str | Path, rows: list[dict]) -> str:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def main() -> None:
    """`python bench/data_family.py sft multiturn 96 out.jsonl`: one dataset of the family, as family.py builds it."""
    import argparse

    from harness import default_model_dir
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("job", choices=["sft", "dpo"])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    rows = (sft_rows if a.job == "sft" else dpo_rows)(a.kind, a.n, a.seed, lambda text: len(tok(text)["input_ids"]))
    print(f"wrote {write(a.out, rows)}")


if __name__ == "__main__":
    main()
