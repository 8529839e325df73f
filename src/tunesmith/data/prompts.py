"""Read prompt files for GRPO (and PPO): one prompt per line, plus whatever fields the rewards need.

Accepted rows:
  {"messages": [... ending with a user turn], ...}     roles system/user/assistant
  {"prompt": "text" | [messages], ...}                 a string is one user turn
Other fields of the row (e.g. `reference` for exact_match) are kept and handed to reward functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.formats import problems_error, read_jsonl_rows
from tunesmith.data.preference import parse_prompt


@dataclass
class PromptRow:
    messages: list[dict[str, str]]  # ends with a user turn
    row: dict[str, Any]  # the raw JSON object
    where: str  # "FILE:LINE"


def parse_prompt_row(obj: Any) -> tuple[tuple[list, dict] | None, list[str]]:
    if not isinstance(obj, dict):
        return None, [f"each line must be a JSON object, got {type(obj).__name__}"]
    if "messages" in obj:
        messages, problem = parse_prompt(obj["messages"], "messages", allow_string=False)
    elif "prompt" in obj:
        messages, problem = parse_prompt(obj["prompt"], "prompt", allow_string=True)
    else:
        return None, ["missing `messages` (a list ending with a user turn) or `prompt`"]
    return (None, [problem]) if problem is not None else ((messages, obj), [])


def load_prompt_file(path: str | Path) -> list[PromptRow]:
    """Every prompt of the file, or a DataError listing every malformed row as FILE:LINE."""
    path = Path(path)
    rows, problems = read_jsonl_rows(path, parse_prompt_row)
    if problems:
        raise problems_error(path, problems)
    return [PromptRow(messages, obj, f"{path}:{n}") for n, (messages, obj) in rows]
