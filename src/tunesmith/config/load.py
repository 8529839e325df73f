"""Build a config from defaults < YAML file (`--config`) < flags < `--set key=value`.

Every key is checked against the schema: an unknown key is refused with the closest valid name, a
value of the wrong type names the key and, for YAML, the file and line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Leaf:
    key: str  # dotted, e.g. "train.lr"
    field: dataclasses.Field
    type: Any  # resolved annotation


def leaf_fields(cls: type, prefix: str = "") -> list[Leaf]:
    """All scalar options of a config class, with dotted keys, depth first."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            leaves += leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            leaves.append(Leaf(f"{prefix}{f.name}", f, tp))
    return leaves


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, whether None is allowed) of an annotation like `int | None`."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def coerce(leaf: Leaf, value: Any, where: str = "") -> Any:
    """Check and convert one value for `leaf`; `where` (e.g. 'cfg.yaml:12: ') prefixes errors."""
    base, nullable = _base_type(leaf.type)
    choices = leaf.field.metadata.get("choices")
    if isinstance(value, str) and base is not str:
        try:
            value = yaml.safe_load(value)  # "3" -> 3, "true" -> True, "1e-4" -> 0.0001, "null" -> None
        except yaml.YAMLError:
            pass
        if isinstance(value, str) and base is float:
            try:
                value = float(value)
            except ValueError:
                pass
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{where}{leaf.key}: may not be empty")
    ok = (
        (base is bool and isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool))
    )
    if not ok:
        raise ConfigError(f"{where}{leaf.key}: expected {base.__name__}, got {value!r}")
    value = base(value)
    if choices and value not in choices:
        raise ConfigError(f"{where}{leaf.key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _suggest(key: str, valid: list[str]) -> str:
    # a bare or misplaced leaf name first: "lr" -> "train.lr" (fuzzy matching would say "lora.r")
    close = [v for v in valid if v.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    if not close:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key_error(key: str, valid: list[str], where: str = "") -> ConfigError:
    return ConfigError(f"{where}unknown config key '{key}'{_suggest(key, valid)}")


def _yaml_leaves(node: yaml.Node, prefix: str = "") -> list[tuple[str, yaml.Node]]:
    """Flatten a composed YAML mapping into (dotted key, value node) pairs, keeping line numbers."""
    out = []
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        if isinstance(value_node, yaml.MappingNode):
            out += _yaml_leaves(value_node, key + ".")
        else:
            out.append((key, value_node))
    return out


def _yaml_syntax_error(path: Path, e: yaml.YAMLError) -> ConfigError:
    """`FILE:LINE: invalid YAML: what (column N)`, from PyYAML's marks (its own text quotes "<unicode string>")."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return ConfigError(f"{path}: invalid YAML: {e}")
    problem = getattr(e, "problem", None) or "syntax error"
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" that starts at line {context_mark.line + 1}" if context_mark and context_mark.line != mark.line else ""
    return ConfigError(
        f"{path}:{mark.line + 1}: invalid YAML: {problem} (column {mark.column + 1}"
        + (f", {context}{started})" if context else ")")
    )


def read_yaml_overrides(
    path: str | Path, leaves: dict[str, Leaf], origins: dict[str, str] | None = None
) -> dict[str, Any]:
    """The file's values by dotted key; `origins` (when given) gets each key's `FILE:LINE: `."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise _yaml_syntax_error(path, e) from None
    except RecursionError:  # PyYAML's parser recurses per nesting level: [[[[...]]]] thousands deep
        raise ConfigError(f"{path}: invalid YAML: nested too deeply to be a config") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:1: a config file must be a mapping of keys to values")
    values = {}
    for key, node in _yaml_leaves(root):
        where = f"{path}:{node.start_mark.line + 1}: "
        section = [k for k in leaves if k.startswith(key + ".")]
        if node.tag == "tag:yaml.org,2002:null" and section:
            continue  # an empty section (`train:` with every key commented out)
        if section and key not in leaves:
            kind = "a list" if isinstance(node, yaml.SequenceNode) else f"the value {node.value!r}"[:80]
            raise ConfigError(
                f"{where}{key}: a section: expected a mapping of its keys "
                f"({', '.join(k[len(key) + 1 :] for k in section[:3])}, ...), got {kind}"
            )
        if key not in leaves:
            raise unknown_key_error(key, list(leaves), where)
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(f"{where}{key}: expected a single value")
        value = yaml.safe_load(yaml.serialize(node))
        values[key] = coerce(leaves[key], value, where)
        if origins is not None:
            origins[key] = where
    return values


def parse_set_items(items: list[str], leaves: dict[str, Leaf]) -> dict[str, Any]:
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected key=value")
        key = key.strip()
        if key not in leaves:
            raise unknown_key_error(key, list(leaves), "--set: ")
        values[key] = coerce(leaves[key], raw, "--set: ")
    return values


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per schema field (default suppressed, so only given flags override)."""
    parser.add_argument("--config", help="YAML config file; flags override it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=1e-4 (repeatable)",
    )
    for leaf in leaf_fields(cls):
        meta = leaf.field.metadata
        base, _ = _base_type(leaf.type)
        kwargs: dict[str, Any] = {"dest": leaf.key, "default": argparse.SUPPRESS, "help": meta["help"]}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = leaf.key.rsplit(".", 1)[-1].upper()
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
                kwargs.pop("metavar")
        parser.add_argument(meta["flag"], **kwargs)


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """The recipes' --trust-remote-code (RunConfig's flag and help) for a command that loads a model itself."""
    from tunesmith.config.schema import RunConfig

    meta = {f.name: f for f in dataclasses.fields(RunConfig)}["trust_remote_code"].metadata
    parser.add_argument(meta["flag"], action="store_true", help=meta["help"])


def _assign(cfg: Any, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    obj = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, name, value)


def _lookup(cfg: Any, key: str) -> Any:
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def build_config(
    cls: type,
    args: argparse.Namespace | dict | None = None,
    base_file: str | Path | None = None,
    stand_ins: dict[str, Any] | None = None,
) -> Any:
    """Defaults, then `base_file` (a resumed run's saved config), then `--config` YAML, then explicit
    flags, then `--set` items; then `validate()`.

    `stand_ins` fill the keys among theirs that are still empty (None or ""), for `validate()` only:
    afterwards those keys are empty again. `tunesmith plan` checks a run exactly as training would,
    without the --out or --data that only training needs."""
    ns = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    leaves = {leaf.key: leaf for leaf in leaf_fields(cls)}
    cfg = cls()
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}  # key -> where its value came from ("run.yaml:7: ", "--lr: "), for validate()
    if base_file is not None:
        merged.update(read_yaml_overrides(base_file, leaves, origins))
    if ns.get("config"):
        merged.update(read_yaml_overrides(ns["config"], leaves, origins))
    for key, value in ns.items():
        if key in leaves:
            origins[key] = f"{leaves[key].field.metadata['flag']}: "
            merged[key] = coerce(leaves[key], value, origins[key])
    set_items = parse_set_items(ns.get("set") or [], leaves)
    merged.update(set_items)
    origins.update(dict.fromkeys(set_items, "--set: "))
    for key, value in merged.items():
        _assign(cfg, key, value)
    stand_ins = stand_ins or {}
    empty = {key: _lookup(cfg, key) for key in stand_ins if _lookup(cfg, key) in (None, "")}
    for key in empty:
        _assign(cfg, key, coerce(leaves[key], stand_ins[key]))
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(_with_origin(str(e), origins)) from None
    for key, value in empty.items():
        _assign(cfg, key, value)
    return cfg


def _with_origin(message: str, origins: dict[str, str]) -> str:
    """`train.lr: must be > 0` -> `run.yaml:4: train.lr: must be > 0`: the file and line (or the flag) that set
    the value a check refused, when the message starts with that key."""
    key = next((k for k in origins if message.startswith((k + ":", k + " ("))), None)
    return origins[key] + message if key is not None else message


def build_run_config(cls: type, args: argparse.Namespace) -> Any:
    """A training command's config; `--resume` starts from the run's own saved config.yaml (flags still win)."""
    base = None
    out = getattr(args, "out", None)
    if getattr(args, "resume", False) and out and (Path(out) / "config.yaml").is_file():
        base = Path(out) / "config.yaml"
    return build_config(cls, args, base_file=base)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Any, header: str = "") -> str:
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    return (header + "\n" if header else "") + body
