"""Self-synthesised rehearsal: the base model's own answers to general prompts, mixed into training.

The prompts (data/replay_prompts.jsonl, built by scripts/build_replay_prompts.py) are disjoint from the
probe's, so that replay does not train on the very answers that measure forgetting.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.templates import TokenizedExample
from tunesmith.forgetting.probe import base_answers, load_probe, probe_examples

REPLAY_PROMPTS = Path(__file__).parent / "data" / "replay_prompts.jsonl"


def self_replay_examples(tokenizer, model_dir: Path, say=print) -> list[TokenizedExample]:
    """The bundled replay prompts with the base's greedy answers (generated once per base, cached)."""
    items = load_probe(REPLAY_PROMPTS)
    return probe_examples(tokenizer, items, base_answers(items, model_dir, say=say))
