"""The Python API: one function per recipe, with keyword arguments named like the command's flags.

    import tunesmith
    run = tunesmith.sft(model="smollm2-135m-instruct", data="train.jsonl", method="lora", lr=2e-4, out="runs/a")
    run.output, run.final, run.metrics[-1]
    model, tokenizer = tunesmith.load(run.run_dir)

`--lora-r 8` is `lora_r=8`, `--no-packing` is `packing=False`, `--config FILE` is `config="FILE"`; the
keyword arguments of each function are generated from its recipe's config schema (the same one the
flags, YAML files and `--set` come from), so `help(tunesmith.dpo)` lists them all. Bad arguments raise
`tunesmith.ConfigError` / `DataError` with the messages the command prints. `on_event` receives every
message the terminal would show ({"type": "message", "message": ...}) and every metrics row
({"type": "metrics", "data": {...}}).
"""

from __future__ import annotations

import inspect
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config.load import Leaf, build_config, leaf_fields, unknown_key_error
from tunesmith.errors import ConfigError, ModelError, disk_full
from tunesmith.planner import plan_recipe
from tunesmith.recipes import RECIPES, Recipe

if TYPE_CHECKING:
    from tunesmith.train.run import RunResult


def option_names(config_cls: type) -> dict[str, Leaf]:
    """Keyword argument -> config leaf: the flag without its dashes, `-` as `_` (--lora-r -> lora_r)."""
    return {leaf.field.metadata["flag"].lstrip("-").replace("-", "_"): leaf for leaf in leaf_fields(config_cls)}


def _reward_spec(value: Any) -> str:
    """`reward=` may list built-in names, specs and Python functions; a function is named module:function
    (its import path, written to config.yaml), so it must be importable by that name: no lambdas."""
    items = value if isinstance(value, (list, tuple)) else [value]
    specs = []
    for item in items:
        if callable(item):
            name = getattr(item, "__qualname__", "")
            if not name or "<" in name:
                raise ConfigError(
                    "reward: a Python reward must be a named function (def), not a lambda or a "
                    "closure: it is recorded in config.yaml as module:function"
                )
            specs.append(f"{item.__module__}:{name}")
        else:
            specs.append(str(item))
    return ",".join(specs)


def _config_values(recipe: str, config: str | None, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments -> the config keys `build_config` takes (lora_r -> lora.r), `config` as its YAML file."""
    names = option_names(RECIPES[recipe].config)
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in names:
            raise unknown_key_error(key, list(names), where)
        if key == "reward" and recipe == "grpo":
            value = _reward_spec(value)
        values[names[key].key] = value
    if config is not None:
        values["config"] = config
    return values


def run_recipe(
    name: str,
    config: str | None = None,
    on_event: Callable[[dict], None] | None = None,
    progress: bool = False,
    quiet: bool = False,
    **options: Any,
) -> RunResult:
    """Build `name`'s config from its defaults, `config` (a YAML file) and `options`, then run it here."""
    recipe = RECIPES[name]
    cfg = build_config(recipe.config, _config_values(name, config, options, f"tunesmith.{name}(): "))
    say = (lambda message: None) if quiet else print
    # a run that raises leaves its Ctrl-C / SIGTERM handlers behind: give the caller's back, whatever happens
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return recipe.run_function()(cfg, say=say, progress=progress, on_event=on_event)
    except OSError as e:
        full = disk_full(e)
        if full is None:
            raise
        raise full from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def _recipe_function(recipe: Recipe) -> Callable[..., RunResult]:
    def run(
        config: str | None = None,
        on_event: Callable[[dict], None] | None = None,
        progress: bool = False,
        quiet: bool = False,
        **options: Any,
    ) -> RunResult:
        return run_recipe(recipe.name, config, on_event, progress, quiet, **options)

    run.__name__ = run.__qualname__ = recipe.name
    run.__module__ = "tunesmith"
    leaves = option_names(recipe.config)
    params = [
        inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=leaf.field.default, annotation=leaf.type)
        for k, leaf in leaves.items()
    ]
    fixed = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None"),
        inspect.Parameter(
            "on_event", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Callable[[dict], None] | None"
        ),
        inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
    ]
    run.__signature__ = inspect.Signature(params + fixed, return_annotation="RunResult")  # type: ignore[attr-defined]
    options = "\n".join(f"    {k}: {leaf.field.metadata['help']}" for k, leaf in leaves.items())
    run.__doc__ = (
        f"{recipe.description}\n\nReturns a RunResult (run_dir, output, steps, final, eval, seconds, model, "
        f"manifest, metrics). `config`: a YAML file the arguments override; `on_event`: called with every "
        f"message and metrics row; `progress`: a progress bar; `quiet`: print nothing.\n\n"
        f"Keyword arguments (the `tunesmith {recipe.name}` flags):\n{options}\n"
    )
    return run


sft = _recipe_function(RECIPES["sft"])
dpo = _recipe_function(RECIPES["dpo"])
kto = _recipe_function(RECIPES["kto"])
reward = _recipe_function(RECIPES["reward"])
ppo = _recipe_function(RECIPES["ppo"])
grpo = _recipe_function(RECIPES["grpo"])


def plan(
    recipe: str = "sft",
    config: str | None = None,
    tokens: int | None = None,
    gpu: str | None = None,
    gpus: int = 1,
    price_per_hour: float | None = None,
    mfu: float | None = None,
    peak_tflops: float | None = None,
    trained_fraction: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`tunesmith plan`: parameters, memory, FLOPs, time and cost of the run `tunesmith.<recipe>(**options)`
    would start, before starting it (arithmetic on the model's shape; no torch, no download).

    `options` and `config` are the recipe function's own (`model=`, `method=`, `lora_r=`, `max_length=`,
    ...; `out` and `data` are not needed). The rest is what training has no field for: `tokens` the run
    trains on (else counted from `data` for sft, or `max_steps` full rows), the `gpu` (a name from
    `tunesmith.planner` GPUS; default h100, cpu with device="cpu"), data-parallel `gpus`, the
    `price_per_hour` per GPU, `mfu`, `peak_tflops`, `trained_fraction`. Returns the plan as a dict: the
    same keys as `tunesmith plan --json` (total_params, trainable_params, memory_bytes, ..., warnings)."""
    if recipe not in RECIPES:
        raise unknown_key_error(recipe, list(RECIPES), "tunesmith.plan(recipe=...): ")
    return plan_recipe(
        recipe,
        _config_values(recipe, config, options, f"tunesmith.plan(recipe={recipe!r}): "),
        tokens=tokens,
        gpu=gpu,
        gpus=gpus,
        price_per_hour=price_per_hour,
        mfu=mfu,
        peak_tflops=peak_tflops,
        trained_fraction=trained_fraction,
    )


def evaluate(
    model: str,
    adapter: str | None = None,
    base: str | None = None,
    probe: str | None = None,
    probe_size: int = 0,
    data: str | None = None,
    max_length: int = 512,
    device: str = "auto",
    precision: str = "auto",
    limit: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """`tunesmith eval`: drift from the base (probe perplexity, KL to the base) of `model` + `adapter`
    (or of a fully fine-tuned `model` against `base`), and task metrics on `data`. Returns the result dict."""
    from tunesmith.forgetting.evaluate import evaluate_model  # heavy: torch, transformers

    if adapter and base:
        raise ConfigError("--adapter and --base: with an adapter, the base is the adapter switched off; give one")
    if probe_size < 0 or (limit is not None and limit < 1) or max_length < 8:
        raise ConfigError("--probe-size must be >= 0, --limit >= 1 and --max-length >= 8")
    return evaluate_model(
        model,
        adapter,
        base,
        probe,
        probe_size,
        data,
        max_length,
        device,
        precision,
        limit,
        (lambda s: None) if quiet else print,
        progress=not quiet,
    )


def load(path: str | Path, device: str = "auto", merge: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) ready to generate, from a run directory, its adapter/ or model/, or a model name.

    An adapter loads over the base its run recorded (its adapter_config.json names the base directory);
    `merge` folds it into the weights in memory (faster decoding, same outputs)."""
    from tunesmith.models.inference import load_for_inference  # heavy: torch, transformers, peft

    where = Path(path)
    if (where / "run.json").is_file():
        run = json.loads((where / "run.json").read_text())
        where = where / run["output"]
        if (where / "reward_model.json").is_file():
            raise ModelError(f"{where}: a reward model scores, it does not generate (use `tunesmith score`)")
    if (where / "adapter_config.json").is_file():
        base = json.loads((where / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{where}/adapter_config.json: no base_model_name_or_path to load the adapter over")
        return load_for_inference(base, [str(where)], device, merge)
    return load_for_inference(str(where), None, device)
