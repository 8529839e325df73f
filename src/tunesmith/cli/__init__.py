"""The `tunesmith` command: one entry point, one sub-command per job.

Errors a user can cause (TunesmithError) print as one clear message and exit with code 2, with no
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from tunesmith import __version__
from tunesmith.errors import Interrupted, TunesmithError, disk_full


def build_parser() -> argparse.ArgumentParser:
    from tunesmith.cli import (
        adapters,
        chat,
        data,
        demo,
        evaluate,
        generate,
        launch,
        merge,
        models,
        plan,
        score,
        serve,
        verify,
    )

    parser = argparse.ArgumentParser(
        prog="tunesmith", description="Fine-tune a language model into a specialist: cheaply, reversibly, measured."
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, launch, score, evaluate, generate, chat, merge, verify, adapters, plan, data, models, serve):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return int(args.handler(args) or 0)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:
        full = disk_full(e)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return full.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
