"""`tunesmith verify --run DIR`: the base is untouched, checked against the run's recorded checksums."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a run left its base model's weight files untouched",
        description="Recomputes the sha256 of the base's weight files and compares it with the "
        "checksums the run recorded at its start and end (RUN/base_checksum.json). "
        "Exit code 0: untouched; 1: changed.",
    )
    p.add_argument("--run", required=True, help="a tunesmith run directory")
    p.set_defaults(handler=run)


def run(args) -> int:
    from tunesmith.models.integrity import verify_run  # heavy: tunesmith.models loads torch

    ok, message = verify_run(args.run)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
