"""A `python` grader's process: its source is checked here without running it, and run in a Python process
of its own (python_grader_worker.py), never in the training process.

One process per grader, started on its first call and kept: each completion is one JSON line each way,
so GRPO pays one interpreter start per run, not per completion. A call that raises, returns anything but a
finite number, or runs past the timeout is a GraderError naming the grader; after a timeout (or a crash)
the process is gone and the next call starts a new one. The process is not a sandbox: it can do what the
user running tunesmith can. It gets an environment with only PATH, HOME, locale and temp settings (no API
keys or database URLs from the caller's), a temporary working directory, a session of its own (a Ctrl-C
at the terminal is the training process's to handle) and, on Linux, SIGKILL when its parent dies.
"""

from __future__ import annotations

import ast
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from tunesmith.errors import ConfigError, TunesmithError

DEFAULT_TIMEOUT_S = 10.0
TIMEOUT_ENV = "TUNESMITH_GRADER_TIMEOUT_S"
WORKER = Path(__file__).with_name("python_grader_worker.py")
CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")


class GraderError(TunesmithError):
    """A grader failed on one completion (the reward wrapper, rewards.py `_call`, adds the row)."""


def resolve_timeout_s(asked: float | None) -> float:
    """Seconds one call may take: `asked`, else the environment's TUNESMITH_GRADER_TIMEOUT_S, else 10."""
    if asked is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT_S
        try:
            asked = float(raw)
        except ValueError:
            raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be a number of seconds") from None
    if not (math.isfinite(asked) and asked > 0):
        raise ConfigError(f"python grader timeout: must be a positive number of seconds, got {asked}")
    return asked


def check_source(source: str, path: str, name: str) -> None:
    """Compile the source (not run it) and find a top-level grade taking (sample, item)."""
    try:
        tree = ast.parse(source, f"<grader {name}>")
    except (SyntaxError, ValueError) as e:
        where = f"line {e.lineno}: " if isinstance(e, SyntaxError) and e.lineno else ""
        raise ConfigError(f"{path}.source: {where}{e.msg if isinstance(e, SyntaxError) else e}") from None
    defined: ast.stmt | None = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "grade":
            defined = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            names += [a.asname or a.name for a in getattr(node, "names", [])]
            if "grade" in names:
                defined = node
    if defined is None:
        raise ConfigError(f"{path}.source: defines no function grade(sample, item)")
    if isinstance(defined, ast.AsyncFunctionDef):
        raise ConfigError(f"{path}.source: grade must be a plain function (def), not async def")
    if isinstance(defined, ast.FunctionDef):
        args = defined.args
        positional = len(args.posonlyargs) + len(args.args)
        needed = positional - len(args.defaults)
        if (
            (positional < 2 and args.vararg is None) or needed > 2 or any(d is None for d in args.kw_defaults)
        ):  # kw_defaults holds None for a keyword-only argument without a default
            raise ConfigError(f"{path}.source: grade must take two arguments, (sample, item)")


class PythonWorker:
    """The process one python grader's source runs in (rollout/python_grader_worker.py): started on first
    use, then one JSON line each way per completion. A timeout kills it; the next call starts another."""

    def __init__(self, name: str, source: str, timeout_s: float):
        self.name, self.source, self.timeout_s = name, source, timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._directory: str | None = None
        self._buffer = b""
        self._finalizer: weakref.finalize | None = None

    def grade(self, sample: dict, item: dict) -> float:
        with self._lock:
            if self._process is None:
                self._start()
            reply = self._ask({"sample": sample, "item": item}, "grade()")
        if "error" in reply:
            raise GraderError(f"python grader '{self.name}': {reply['error']}")
        return float(reply["score"])

    def _start(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="tunesmith-grader-")
        env = {k: os.environ[k] for k in CHILD_ENV if k in os.environ}
        # its own session: a Ctrl-C at the terminal is the training process's to handle, not the grader's
        self._process = subprocess.Popen(
            [sys.executable, "-E", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self._directory,
            env=env,
            start_new_session=True,
        )
        self._buffer = b""
        self._finalizer = weakref.finalize(self, _stop_process, self._process, self._directory)
        reply = self._ask({"name": self.name, "source": self.source}, "running the source")
        if "error" in reply:
            self.stop()
            raise GraderError(f"python grader '{self.name}': {reply['error']}")

    def _ask(self, request: dict, doing: str) -> dict:
        """Send one line, read one line within the timeout; a dead or stuck process is stopped and reported."""
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            code = process.poll()
            self.stop()
            raise GraderError(f"python grader '{self.name}': its process exited (code {code})") from None
        deadline = time.monotonic() + self.timeout_s
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self.stop(kill=True)
                raise GraderError(
                    f"python grader '{self.name}': {doing} did not finish within {self.timeout_s:g} s; its process "
                    "was stopped (a new one starts for the next completion)"
                )
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = process.wait()
                self.stop()
                raise GraderError(f"python grader '{self.name}': its process exited (code {code}) during {doing}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def stop(self, kill: bool = False) -> None:
        if kill and self._process is not None:
            self._process.kill()  # stuck in grade(): it would not read the end of its input
        if self._finalizer is not None:
            self._finalizer()  # idempotent: runs _stop_process once
        self._process, self._finalizer, self._directory = None, None, None


def _stop_process(process: subprocess.Popen, directory: str | None) -> None:
    try:
        if process.stdin is not None:
            process.stdin.close()  # its loop ends at the end of its input
    except OSError:
        pass
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
