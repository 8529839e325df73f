"""Read unpaired data for KTO: each row is one completion labelled desirable (true) or undesirable (false).

Accepted rows:
  {"prompt": str | [messages], "completion": str | [assistant messages], "label": true | false}
                                                      (a string prompt is one user turn; a string completion is
                                                       one assistant turn; the prompt must end with a user turn)
  {"messages": [..., {"role": "user", ...}, {"role": "assistant", ...}, ...], "label": true | false}
                                                      (OpenAI chat style: the prompt is every message up to the
                                                       last user turn, the completion the assistant turns after it)

Every problem is reported as `FILE:LINE: what is wrong`, all of them, not only the first. A file with only one
class (all desirable or all undesirable) is not an error: KTO still trains on it, so it is a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import ROLES, problems_error, read_jsonl_rows, shown
from tunesmith.data.preference import _message, _parse_completion, _type, parse_prompt

COMMON_KEYS = ("prompt", "completion")


@dataclass
class UnpairedExample:
    prompt: list[dict[str, str]]  # {"role", "content"}; ends with a user turn
    completion: list[dict[str, str]]  # assistant messages only
    desirable: bool
    where: str  # "FILE:LINE", for messages about this row


@dataclass
class ParsedUnpairedFile:
    path: Path
    examples: list[UnpairedExample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    desirable: int = 0
    undesirable: int = 0


def _split_messages(value: Any) -> tuple[tuple[list, list] | None, str | None]:
    """(prompt, completion) of a chat: up to and including the last user turn, then the assistant turns."""
    if not isinstance(value, list):
        return None, f"`messages`: must be a list of messages, got {_type(value)}"
    if not value:
        return None, "`messages`: empty list: needs a user turn and the assistant turns answering it"
    messages = []
    for i, m in enumerate(value):
        msg, problem = _message(m, f"messages[{i}]")
        if problem is not None:
            return None, problem
        assert msg is not None  # _message returns a message or a problem
        if msg["role"] not in ROLES:
            return None, f"`messages[{i}].role`: unknown role {shown(msg['role'])} (expected one of {', '.join(ROLES)})"
        messages.append(msg)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return None, "`messages`: no user turn: the prompt needs one"
    last_user = users[-1]
    if last_user == len(messages) - 1:
        return None, "`messages`: no assistant turn after the last user turn: nothing to label"
    for i in range(last_user + 1, len(messages)):
        if messages[i]["role"] != "assistant":
            return None, (
                f"`messages[{i}].role`: must be 'assistant' after the last user turn, got {shown(messages[i]['role'])}"
            )
        if not messages[i]["content"].strip():
            return None, f"`messages[{i}].content`: empty"
    return (messages[: last_user + 1], messages[last_user + 1 :]), None


def _parse_label(obj: dict) -> tuple[bool | None, str | None]:
    if "label" not in obj:
        return None, "missing `label` (true for a desirable completion, false for an undesirable one)"
    if not isinstance(obj["label"], bool):  # 1/0 or "true" are refused: a typo should not flip a label
        return None, f"`label`: must be true or false, got {json.dumps(obj['label'])}"
    return obj["label"], None


def parse_unpaired_row(obj: Any) -> tuple[tuple[list, list, bool] | None, list[str]]:
    """(prompt, completion, desirable) of one row, or every reason it is malformed, one per field."""
    if not isinstance(obj, dict):
        return None, [f"each line must be a JSON object, got {_type(obj)}"]
    common = [k for k in COMMON_KEYS if k in obj]
    if "messages" in obj and common:
        return None, [
            f"mixes keys of two formats (`messages`, {', '.join(f'`{k}`' for k in common)}); use "
            "either `messages` or `prompt`/`completion`, each with `label`"
        ]
    if "messages" in obj:
        sides, problem = _split_messages(obj["messages"])
        side_problems = [problem]
    elif common:
        prompt, prompt_problem = (
            parse_prompt(obj["prompt"], "prompt", allow_string=True) if "prompt" in obj else ([], "missing `prompt`")
        )
        completion, completion_problem = (
            _parse_completion(obj["completion"], "completion", "prompt", allow_string=True)
            if "completion" in obj
            else ([], "missing `completion`")
        )
        sides, side_problems = (prompt, completion), [prompt_problem, completion_problem]
    else:
        found = ", ".join(f"`{k}`" for k in obj) or "none"
        return None, [
            "not an unpaired row: expected `prompt`, `completion` and `label`, or `messages` and "
            f"`label`; found keys: {found}"
        ]
    label, label_problem = _parse_label(obj)
    problems = [p for p in (*side_problems, label_problem) if p is not None]
    if problems:
        return None, problems
    assert sides is not None and label is not None  # each comes with a problem when missing
    return (sides[0], sides[1], label), []


def read_unpaired_file(path: str | Path) -> ParsedUnpairedFile:
    """Parse every line; collect examples, class counts, problems and warnings (does not raise for bad rows)."""
    path = Path(path)
    rows, problems = read_jsonl_rows(path, parse_unpaired_row)
    parsed = ParsedUnpairedFile(path, problems=problems)
    for number, (prompt, completion, desirable) in rows:
        parsed.examples.append(UnpairedExample(prompt, completion, desirable, f"{path}:{number}"))
    parsed.desirable = sum(e.desirable for e in parsed.examples)
    parsed.undesirable = len(parsed.examples) - parsed.desirable
    if parsed.examples and not parsed.undesirable:
        parsed.warnings.append(
            f"{path}: all {parsed.desirable} examples are desirable (label true), none "
            "undesirable: KTO still trains, but learns only from good completions"
        )
    if parsed.examples and not parsed.desirable:
        parsed.warnings.append(
            f"{path}: all {parsed.undesirable} examples are undesirable (label false), none "
            "desirable: KTO still trains, but learns only from bad completions"
        )
    return parsed


def load_unpaired_file(path: str | Path) -> ParsedUnpairedFile:
    """The parsed file, or a DataError listing every problem. One missing class is a warning, not an
    error: the caller prints `warnings`."""
    parsed = read_unpaired_file(path)
    if parsed.problems:
        raise problems_error(parsed.path, parsed.problems)
    return parsed
