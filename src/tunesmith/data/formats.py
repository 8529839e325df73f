"""Read supervised fine-tuning data: OpenAI chat JSONL or prompt/completion JSONL.

Accepted rows:
  {"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1 (assistant only)}, ...]}
  {"prompt": str, "completion": str}          (becomes one user turn and one assistant turn)

Every problem is reported as `FILE:LINE: what is wrong`, all of them, not only the first.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    messages: list[dict[str, Any]]  # {"role", "content", "weight"}; weight is 1/0 for assistant turns
    where: str  # "FILE:LINE", for messages about this row


@dataclass
class ParsedFile:
    path: Path
    rows: list[Conversation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)` for an error message, cut short: a 10 MB field must not become a 10 MB message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _json_problem(raw: bytes, e: json.JSONDecodeError) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:  # a binary file, or UTF-16 text: say so rather than "Invalid control character"
        return f"bad JSON: a NUL byte at byte {nul} (a binary file, or text not saved as UTF-8?)"
    return f"bad JSON: {e.msg} (column {e.colno})"


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, parsed object, problem) for each non-blank line of a JSONL file.

    A UTF-8 byte-order mark at the start of the file (Windows editors write one) is skipped; CRLF line
    endings are whitespace to JSON."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError([f"{path}: cannot read: {e.strerror or e}"]) from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield number, None, f"invalid UTF-8 at byte {e.start}"
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield number, None, _json_problem(raw, e)
            continue
        except RecursionError:  # json's decoder recurses per nesting level: [[[[...]]]] 100k deep
            yield number, None, "bad JSON: arrays or objects nested too deeply to read"
            continue
        yield number, obj, None


def _parse_messages(messages: Any) -> tuple[list[dict], str | None]:
    if not isinstance(messages, list) or not messages:
        return [], "`messages` must be a non-empty list"
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return [], f"messages[{i}]: must be an object with `role` and `content`"
        role = m.get("role")
        if "role" not in m:
            return [], f"messages[{i}]: missing `role`"
        if role not in ROLES:
            return [], f"messages[{i}].role: unknown role {shown(role)} (expected one of {', '.join(ROLES)})"
        if "content" not in m:
            return [], f"messages[{i}]: missing `content`"
        if not isinstance(m["content"], str):
            return [], f"messages[{i}].content: must be a string, got {type(m['content']).__name__}"
        weight = m.get("weight", 1)
        if role == "assistant" and (isinstance(weight, bool) or weight not in (0, 1)):
            return [], f"messages[{i}].weight: must be 0 or 1, got {shown(weight)}"
        if role != "assistant" and "weight" in m:
            return [], f"messages[{i}].weight: only assistant messages take a weight"
        out.append({"role": role, "content": m["content"], "weight": int(weight) if role == "assistant" else 0})
    assistant = [m for m in out if m["role"] == "assistant"]
    if not assistant:
        return [], "no assistant turn: nothing to learn from"
    if not any(m["weight"] for m in assistant):
        return [], "every assistant turn has weight 0: nothing to learn from"
    return out, None


def parse_row(obj: Any) -> tuple[list[dict], str | None]:
    """Messages of one row, or the reason it is malformed."""
    if not isinstance(obj, dict):
        return [], f"each line must be a JSON object, got {type(obj).__name__}"
    if "messages" in obj:
        return _parse_messages(obj["messages"])
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if key not in obj:
                return [], f"missing `{key}` (prompt/completion rows need both)"
            if not isinstance(obj[key], str):
                return [], f"`{key}`: must be a string, got {type(obj[key]).__name__}"
        if not obj["completion"].strip():
            return [], "`completion`: empty"
        return _parse_messages(
            [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
        )
    return [], "missing `messages` (or `prompt` and `completion`)"


def read_jsonl_rows(
    path: Path, parse: Callable[[Any], tuple[Any, list[str]]]
) -> tuple[list[tuple[int, Any]], list[str]]:
    """Run `parse` (object -> (value, problems)) on every line of a JSONL file.

    Returns the (line number, value) of the rows without problems, and every problem as
    `FILE:LINE: what is wrong` (`FILE: ...` for a missing or empty file). Shared by all data readers.
    """
    if path.is_dir():
        raise DataError([f"{path}: a directory, not a JSONL file"])
    if not path.is_file():
        raise DataError([f"{path}: no such file"])
    rows: list[tuple[int, Any]] = []
    problems: list[str] = []
    seen_any = False
    for number, obj, problem in iter_json_lines(path):
        seen_any = True
        value, row_problems = (None, [problem]) if problem is not None else parse(obj)
        if row_problems:
            problems.extend(f"{path}:{number}: {p}" for p in row_problems)
        else:
            rows.append((number, value))
    if not seen_any:
        problems.append(f"{path}: empty file: no examples")
    return rows, problems


def _parse_sft_row(obj: Any) -> tuple[list[dict], list[str]]:
    messages, problem = parse_row(obj)
    return messages, [problem] if problem is not None else []


def read_sft_file(path: str | Path) -> ParsedFile:
    """Parse every line; collect rows and problems (does not raise for bad rows)."""
    path = Path(path)
    rows, problems = read_jsonl_rows(path, _parse_sft_row)
    return ParsedFile(path, [Conversation(messages, f"{path}:{n}") for n, messages in rows], problems)


def problems_error(path: Path, problems: list[str]) -> DataError:
    """One DataError for a whole file: a summary line, then every `FILE:LINE: problem`."""
    n = len(problems)
    return DataError(problems, f"{path}: {n} problem{'s' * (n != 1)}; nothing was trained")


def load_sft_file(path: str | Path) -> list[Conversation]:
    """All rows of a file, or a DataError listing every malformed row."""
    parsed = read_sft_file(path)
    if parsed.problems:
        raise problems_error(parsed.path, parsed.problems)
    return parsed.rows
