"""Progress bars for the phases that take more than a few seconds (answering, scoring, measuring, merging)."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int, label: str | None, unit: str) -> tqdm:
    """A bar labelled `label` on the terminal (stderr); none when `label` is None or stderr is not a terminal
    (logs, services, tests), so a library call stays silent unless asked."""
    return tqdm(total=total, desc=label, unit=unit, disable=True if label is None else None, dynamic_ncols=True)
