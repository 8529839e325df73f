"""Errors a user can cause. The CLI prints them without a traceback and exits with code 2."""

import errno


class TunesmithError(Exception):
    """Base class for every error caused by user input (data, config, model name, paths)."""


class DataError(TunesmithError):
    """Malformed training data. Holds one message per problem, each `FILE:LINE: what is wrong`."""

    def __init__(self, problems: list[str], summary: str | None = None):
        self.problems = list(problems)
        lines = ([summary] if summary else []) + self.problems
        super().__init__("\n".join(lines))


class ConfigError(TunesmithError):
    """A bad config key or value; the message names the key (and the file, when there is one)."""


class ModelError(TunesmithError):
    """An unknown model alias or an unreadable model path."""


class OutputError(TunesmithError):
    """The output directory cannot be used as asked (not empty, nothing to resume, ...)."""


class DiskFull(TunesmithError):
    """The disk filled while writing (a checkpoint, the result): exit code 3. Writes are atomic, so what was
    written before (the previous checkpoint) is intact."""

    exit_code = 3


def disk_full(e: OSError) -> DiskFull | None:
    """A DiskFull naming the file for an out-of-space (or quota) OSError; None for any other OSError."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {e.filename}" if e.filename else ""
    return DiskFull(
        f"no space left on the device{where}: free some space (or --keep-checkpoints fewer), then --resume; "
        "the checkpoints written before are intact"
    )


class Diverged(TunesmithError):
    """Too many steps in a row with a NaN or infinite loss or gradient norm (`--max-bad-steps`)."""


class Interrupted(TunesmithError):
    """SIGINT (Ctrl-C) or SIGTERM during training: a checkpoint was saved, `--resume` continues the run."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code  # 130 for SIGINT, 143 for SIGTERM, as a shell reports a signal
        super().__init__(message)
