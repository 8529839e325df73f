"""What an adapter is: its PEFT config, size, base, the data it was trained on and how the run went."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tunesmith.atomic import atomic_directory
from tunesmith.errors import ModelError


def adapter_info(adapter_dir: str | Path) -> dict:
    """PEFT settings (method, rank, alpha, targets), trainable parameters, base, and, for an adapter written
    by a tunesmith run, the run's recipe, data checksums and final metrics."""
    # tunesmith.models loads torch: deferred for CLI start-up
    from tunesmith.models.adapter_files import adapter_weight_shapes, read_adapter_config

    path = Path(adapter_dir)
    cfg = read_adapter_config(path)
    params = 0
    for shape in adapter_weight_shapes(path).values():
        n = 1
        for d in shape:
            n *= d
        params += n
    targets = cfg.get("target_modules")
    info = {
        "adapter": str(path),
        "peft_type": cfg.get("peft_type"),
        "dora": bool(cfg.get("use_dora")),
        "rank": cfg.get("r"),
        "alpha": cfg.get("lora_alpha"),
        "dropout": cfg.get("lora_dropout"),
        "targets": sorted(targets) if isinstance(targets, list) else targets,
        "trainable_params": params,
        "base": cfg.get("base_model_name_or_path"),
    }
    run_dir = path.parent
    run = _json_file(run_dir / "run.json")
    if run is not None:
        info.update(
            {
                "recipe": run.get("recipe"),
                "method": run.get("method"),
                "steps": run.get("steps"),
                "metrics": {k: run[k] for k in ("final", "eval") if run.get(k) is not None},
                "base_checksum": run.get("base_checksum"),
                "forgetting": run.get("forgetting"),
            }
        )
    data = _json_file(run_dir / "data_checksum.json")
    if data is not None:
        info["data"] = data
    return info


def _json_file(path: Path) -> dict | None:
    """A run's JSON record (run.json, data_checksum.json) next to the adapter: None when absent."""
    if not path.is_file():
        return None
    from tunesmith.models.adapter_files import read_json_object  # tunesmith.models loads torch: deferred

    return read_json_object(path)


def format_info(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if value is None:
            continue
        shown = (
            json.dumps(value)
            if isinstance(value, (dict, list))
            else f"{value:,}"
            if isinstance(value, int) and not isinstance(value, bool)
            else str(value)
        )
        lines.append(f"{key:18s} {shown}")
    return "\n".join(lines)


def combine_adapters(
    model: str, adapters: list[str], weights: list[float], out: str | Path, combination: str = "cat"
) -> dict:
    """One adapter from several on the same base, via PEFT's add_weighted_adapter.

    "cat" (default) concatenates the ranks so that ΔW = Σ_i w_i ΔW_i exactly; "linear" averages A and B
    (needs equal ranks; not exact); "svd" re-factorises Σ_i w_i ΔW_i to the largest rank."""
    from tunesmith.models.inference import adapter_names, load_for_inference  # heavy: deferred for CLI start-up

    if len(adapters) < 1 or len(weights) != len(adapters):
        raise ModelError(f"combine: {len(adapters)} adapter(s) and {len(weights)} weight(s); give one weight each")
    net, _ = load_for_inference(model, adapters)
    names = adapter_names(adapters)
    net.add_weighted_adapter(names, weights, "combined", combination_type=combination)
    with tempfile.TemporaryDirectory() as tmp:
        net.save_pretrained(tmp, selected_adapters=["combined"])
        saved = Path(tmp) / "combined"  # PEFT writes a non-default adapter into a folder of its name
        with atomic_directory(out) as target:
            for f in saved.iterdir():
                (target / f.name).write_bytes(f.read_bytes())
    return {"out": str(out), "adapters": dict(zip(names, weights)), "combination": combination}
