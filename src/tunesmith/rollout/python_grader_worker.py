"""The process a `python` grader's source runs in: started by rollout/graders.py as a script, never imported.

It imports nothing of tunesmith. The protocol is one JSON line each way:
  in:  {"name": NAME, "source": SOURCE}            once, first
  out: {"ok": true} | {"error": MESSAGE}           the source ran and defines grade(), or why not (then it exits)
  in:  {"sample": {...}, "item": {...}}            once per completion
  out: {"score": X} | {"error": MESSAGE}           grade(sample, item), or what went wrong
The grader's own output (print, C extensions) cannot break the protocol: file descriptor 1 is pointed at
stderr before the source runs, and replies go to a private copy of the original stdout.
"""

from __future__ import annotations

import ctypes
import json
import linecache
import math
import numbers
import os
import signal
import sys
import traceback

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL when the process that started this one dies, even mid-grade() (Linux; elsewhere the closed
    stdin ends the loop once grade() returns)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def describe(error: BaseException, filename: str) -> str:
    """`Type: message`, and where in the grader's source it happened (the source's own frames only)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    if frames:
        last = frames[-1]
        text += f" (source line {last.lineno}" + (f": {last.line.strip()}" if last.line else "") + ")"
    return text


def main() -> int:
    die_with_parent()
    sys.path.pop(0)  # this file's directory, tunesmith/rollout: no place for the grader's imports to look
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    setup = json.loads(sys.stdin.readline() or "{}")
    filename = f"<grader {setup.get('name', '?')}>"
    source = setup.get("source", "")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks show lines
    namespace: dict = {"__name__": "__grader__"}
    try:
        exec(compile(source, filename, "exec"), namespace)
    except BaseException as e:  # the source is the user's: SystemExit and KeyboardInterrupt are theirs too
        reply({"error": "running the source raised " + describe(e, filename)})
        return 1
    grade = namespace.get("grade")
    if not callable(grade):
        reply({"error": "the source defines no function grade(sample, item)"})
        return 1
    reply({"ok": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            value = grade(request["sample"], request["item"])
        except BaseException as e:
            reply({"error": "grade() raised " + describe(e, filename)})
            continue
        if isinstance(value, numbers.Real) and math.isfinite(float(value)):
            reply({"score": float(value)})
        else:
            shown = repr(value)
            shown = shown if len(shown) <= 200 else shown[:200] + "..."
            reply({"error": f"grade() returned {shown} ({type(value).__name__}); it must return a finite number"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
