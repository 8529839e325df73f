"""Proof that training left the base untouched: a checksum of its weight files at start and end.

RUN/base_checksum.json = {"model_dir": ..., "start": {...}, "end": {...}}, each {"files": {name: sha256},
"digest": sha256 of the sorted (name, sha256) pairs}; `tunesmith verify --run RUN` recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunesmith.atomic import atomic_write_text
from tunesmith.errors import OutputError

CHECKSUM_FILE = "base_checksum.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def base_checksum(model_dir: str | Path) -> dict:
    """sha256 of every weight file of a model directory (or of a single .gguf file), and one digest."""
    model_dir = Path(model_dir)
    paths = (
        [model_dir]
        if model_dir.is_file()
        else sorted({p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
    )
    files = {p.name: file_sha256(p) for p in paths}
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    return {"files": files, "digest": digest}


def record_start(run_dir: Path, model_dir: Path) -> None:
    """Write the start checksum (kept as it is when a resumed run already has one)."""
    path = run_dir / CHECKSUM_FILE
    if path.is_file():
        return
    atomic_write_text(path, json.dumps({"model_dir": str(model_dir), "start": base_checksum(model_dir)}, indent=2))


def record_end(run_dir: Path, model_dir: Path) -> dict:
    """Add the end checksum; returns {"start": digest, "end": digest, "untouched": bool} for run.json."""
    path = run_dir / CHECKSUM_FILE
    record = json.loads(path.read_text()) if path.is_file() else {"model_dir": str(model_dir)}
    record["end"] = base_checksum(model_dir)
    atomic_write_text(path, json.dumps(record, indent=2))
    return summary(record)


def summary(record: dict) -> dict:
    start, end = record.get("start", {}).get("digest"), record.get("end", {}).get("digest")
    return {"start": start, "end": end, "untouched": start is not None and start == end}


def verify_run(run_dir: str | Path) -> tuple[bool, str]:
    """(ok, message): the base's weight files now against the checksums recorded by the run."""
    path = Path(run_dir) / CHECKSUM_FILE
    if not path.is_file():
        raise OutputError(f"{path}: no base checksum recorded (not a tunesmith run, or one from before checksums)")
    record = json.loads(path.read_text())
    now = base_checksum(record["model_dir"])
    start = record.get("start", {})
    changed = sorted(
        name
        for name in set(start.get("files", {})) | set(now["files"])
        if start.get("files", {}).get(name) != now["files"].get(name)
    )
    if "end" in record and record["end"].get("digest") != start.get("digest"):
        return (
            False,
            f"the base changed during the run: {record['model_dir']} (start {start.get('digest')}, "
            f"end {record['end'].get('digest')})",
        )
    if changed:
        return False, f"the base differs from the run's start checksum: {', '.join(changed)} in {record['model_dir']}"
    return True, (
        f"base untouched: {record['model_dir']}, {len(now['files'])} weight file(s), sha256 digest "
        f"{now['digest']} (as at the run's start" + (" and end)" if "end" in record else ")")
    )


def run_summary(run_dir: Path) -> dict:
    """The run.json entry: {"start": digest, "end": digest, "untouched": bool}."""
    path = Path(run_dir) / CHECKSUM_FILE
    return summary(json.loads(path.read_text())) if path.is_file() else {}


DATA_FILE = "data_checksum.json"


def record_data(run_dir: Path, data_cfg) -> None:
    """RUN/data_checksum.json: sha256 of each data file the run reads (train, eval, replay, probe...)."""
    files = {}
    for key in ("train", "eval", "replay"):
        value = getattr(data_cfg, key, None)
        if value and Path(value).is_file():
            files[key] = {"path": str(Path(value).resolve()), "sha256": file_sha256(Path(value))}
    atomic_write_text(run_dir / DATA_FILE, json.dumps(files, indent=2))


def data_differences(run_dir: Path, data_cfg) -> list[str]:
    """Each data file the run recorded (data_checksum.json) that is now another file or has other contents."""
    path = Path(run_dir) / DATA_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    differences = []
    for key, was in recorded.items():
        value = getattr(data_cfg, key, None)
        if not value or not Path(value).is_file():
            differences.append(f"data.{key}: the run read {was['path']}, now {value or 'nothing'}")
        elif file_sha256(Path(value)) != was["sha256"]:
            differences.append(f"data.{key}: {value} has changed since the run started (sha256 differs)")
    return differences


def base_difference(run_dir: Path) -> str | None:
    """What changed in the base's weight files since the run started, or None (also when none was recorded)."""
    if not (Path(run_dir) / CHECKSUM_FILE).is_file():
        return None
    ok, message = verify_run(run_dir)
    return None if ok else message
