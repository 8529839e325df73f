"""Read preference data for DPO: OpenAI preference JSONL or prompt/chosen/rejected JSONL.

Accepted rows:
  {"input": {"messages": [...]},                      (OpenAI preference format; roles system/user/assistant,
   "preferred_output": [{"role": "assistant", ...}],    the prompt must end with a user turn)
   "non_preferred_output": [{"role": "assistant", ...}]}
  {"prompt": str | [messages], "chosen": str | [messages], "rejected": str | [messages]}
                                                      (a string prompt is one user turn; a string completion is
                                                       one assistant turn; completion messages are all assistant)

Every problem is reported as `FILE:LINE: what is wrong`, all of them, not only the first. A row whose chosen
and rejected completions are identical teaches nothing: it is dropped and counted, not reported as a problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import ROLES, problems_error, read_jsonl_rows, shown

OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
COMMON_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    prompt: list[dict[str, str]]  # {"role", "content"}; ends with a user turn
    chosen: list[dict[str, str]]  # assistant messages only
    rejected: list[dict[str, str]]  # assistant messages only
    where: str  # "FILE:LINE", for messages about this row


@dataclass
class ParsedPreferenceFile:
    path: Path
    pairs: list[PreferencePair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    identical: int = 0  # rows dropped because chosen == rejected
    identical_lines: list[int] = field(default_factory=list)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _message(m: Any, label: str) -> tuple[dict | None, str | None]:
    """One {"role", "content"} message (role not yet checked against the caller's rules)."""
    if not isinstance(m, dict):
        return None, f"`{label}`: must be an object with `role` and `content`, got {_type(m)}"
    if "role" not in m:
        return None, f"`{label}`: missing `role`"
    if "content" not in m:
        return None, f"`{label}`: missing `content`"
    if not isinstance(m["content"], str):
        return None, f"`{label}.content`: must be a string, got {_type(m['content'])}"
    return {"role": m["role"], "content": m["content"]}, None


def parse_prompt(value: Any, label: str, *, allow_string: bool) -> tuple[list[dict], str | None]:
    if allow_string and isinstance(value, str):
        return [{"role": "user", "content": value}], None
    if not isinstance(value, list):
        expected = "a string or a list of messages" if allow_string else "a list of messages"
        return [], f"`{label}`: must be {expected}, got {_type(value)}"
    if not value:
        return [], f"`{label}`: empty list: the prompt needs at least one user turn"
    out = []
    for i, m in enumerate(value):
        msg, problem = _message(m, f"{label}[{i}]")
        if problem is not None:
            return [], problem
        assert msg is not None  # _message returns a message or a problem
        if msg["role"] not in ROLES:
            return [], f"`{label}[{i}].role`: unknown role {shown(msg['role'])} (expected one of {', '.join(ROLES)})"
        out.append(msg)
    if out[-1]["role"] != "user":
        return [], f"`{label}`: must end with a user turn, the last is {shown(out[-1]['role'])}"
    return out, None


def _parse_completion(value: Any, label: str, prompt_key: str, *, allow_string: bool) -> tuple[list[dict], str | None]:
    if allow_string and isinstance(value, str):
        if not value.strip():
            return [], f"`{label}`: empty"
        return [{"role": "assistant", "content": value}], None
    if not isinstance(value, list):
        expected = "a string or a list of assistant messages" if allow_string else "a list of assistant messages"
        return [], f"`{label}`: must be {expected}, got {_type(value)}"
    if not value:
        return [], f"`{label}`: empty list: needs at least one assistant message"
    out = []
    for i, m in enumerate(value):
        msg, problem = _message(m, f"{label}[{i}]")
        if problem is not None:
            return [], problem
        assert msg is not None  # _message returns a message or a problem
        if msg["role"] != "assistant":
            return [], (
                f"`{label}[{i}].role`: must be 'assistant', got {shown(msg['role'])} "
                f"(the prompt belongs in `{prompt_key}`)"
            )
        if not msg["content"].strip():
            return [], f"`{label}[{i}].content`: empty"
        out.append(msg)
    return out, None


def _parse_sides(
    obj: dict,
    prompt_key: str,
    chosen_key: str,
    rejected_key: str,
    prompt_value: Any,
    *,
    allow_string: bool,
    prompt_problem: str | None = None,
) -> tuple[tuple[list, list, list] | None, list[str]]:
    """Validate prompt and both completions; every field's problem is reported, one per field."""
    problems = []
    prompt: list[dict] = []
    if prompt_problem is None:
        prompt, prompt_problem = parse_prompt(prompt_value, prompt_key, allow_string=allow_string)
    if prompt_problem is not None:
        problems.append(prompt_problem)
    sides: list[list[dict]] = []
    for key in (chosen_key, rejected_key):
        if key not in obj:
            problems.append(f"missing `{key}`")
            sides.append([])
            continue
        side, problem = _parse_completion(obj[key], key, prompt_key, allow_string=allow_string)
        if problem is not None:
            problems.append(problem)
        sides.append(side)
    if problems:
        return None, problems
    return (prompt, sides[0], sides[1]), []


def parse_preference_row(obj: Any) -> tuple[tuple[list, list, list] | None, list[str]]:
    """(prompt, chosen, rejected) of one row, or every reason it is malformed."""
    if not isinstance(obj, dict):
        return None, [f"each line must be a JSON object, got {_type(obj)}"]
    openai = [k for k in OPENAI_KEYS if k in obj]
    common = [k for k in COMMON_KEYS if k in obj]
    if openai and common:
        return None, [
            f"mixes keys of two formats ({', '.join(f'`{k}`' for k in openai + common)}); use either "
            "`input`/`preferred_output`/`non_preferred_output` or `prompt`/`chosen`/`rejected`"
        ]
    if openai:
        prompt_value: Any = None
        prompt_problem = None
        if "input" not in obj:
            prompt_problem = "missing `input`"
        elif not isinstance(obj["input"], dict):
            prompt_problem = f"`input`: must be an object with `messages`, got {_type(obj['input'])}"
        elif "messages" not in obj["input"]:
            prompt_problem = "`input`: missing `messages`"
        else:
            prompt_value = obj["input"]["messages"]
        return _parse_sides(
            obj,
            "input.messages",
            "preferred_output",
            "non_preferred_output",
            prompt_value,
            allow_string=False,
            prompt_problem=prompt_problem,
        )
    if common:
        return _parse_sides(
            obj,
            "prompt",
            "chosen",
            "rejected",
            obj.get("prompt"),
            allow_string=True,
            prompt_problem=None if "prompt" in obj else "missing `prompt`",
        )
    found = ", ".join(f"`{k}`" for k in obj) or "none"
    return None, [
        "not a preference row: expected `input`, `preferred_output` and `non_preferred_output` "
        f"(OpenAI preference format) or `prompt`, `chosen` and `rejected`; found keys: {found}"
    ]


def read_preference_file(path: str | Path) -> ParsedPreferenceFile:
    """Parse every line; collect pairs, problems and identical rows (does not raise for bad rows)."""
    path = Path(path)
    rows, problems = read_jsonl_rows(path, parse_preference_row)
    parsed = ParsedPreferenceFile(path, problems=problems)
    for number, (prompt, chosen, rejected) in rows:
        if chosen == rejected:
            parsed.identical += 1
            parsed.identical_lines.append(number)
            continue
        parsed.pairs.append(PreferencePair(prompt, chosen, rejected, f"{path}:{number}"))
    if rows and not parsed.pairs and not parsed.problems:
        parsed.problems.append(f"{path}: no usable pairs: all {parsed.identical} have identical chosen and rejected")
    return parsed


def load_preference_file(path: str | Path) -> ParsedPreferenceFile:
    """The parsed file, or a DataError listing every problem. Identical rows are dropped, not errors:
    the caller warns with `identical` (and `identical_lines`)."""
    parsed = read_preference_file(path)
    if parsed.problems:
        raise problems_error(parsed.path, parsed.problems)
    return parsed
