"""`metrics.jsonl`: one JSON object per logged step, appended and flushed as training goes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tunesmith.atomic import atomic_write_text


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 8) if math.isfinite(value) else None
    return value


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics row as it is written: floats to 8 decimals, NaN and infinities as null."""
    return {k: _clean(v) for k, v in record.items()}


class RunningMeans:
    """Per-item means of logged quantities over the items seen (the pairs of a step, an evaluation pass)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, count: int, **values) -> None:
        """`count` new items; each value is a tensor of their per-item quantities (summed here)."""
        for key, v in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(v.detach().float().sum())
        self.count += count

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: v / max(1, self.count) for k, v in self.sums.items()}


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None):
        """Open for appending; when resuming at `resume_step`, drop records logged after it (they belong
        to the part of the run that is about to be redone)."""
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(clean_record(record)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class NullLog:
    """What a process other than rank 0 logs to: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
