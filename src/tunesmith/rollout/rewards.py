"""Programmatic rewards for GRPO and PPO: `tunesmith grpo --reward NAME[,NAME...]`.

A reward is a function `(prompt, completion, row) -> float`:
  prompt      the prompt messages, [{"role": ..., "content": ...}, ...]
  completion  the generated text
  row         the raw JSONL row the prompt came from (a dict)

Built-ins (`words` is `len(completion.split())`):
  json_valid         1.0 if the completion is one JSON object, else 0.0. Surrounding whitespace and one
                     ```json (or bare ```) fence around the whole completion are allowed; any other text
                     before or after the object, an array, a string or a number scores 0.0.
  json_schema:PATH   1.0 if the completion (same unwrapping, any JSON value) validates against the JSON
                     Schema in file PATH, else 0.0. PATH is read and checked once, when the reward is built.
  regex:PATTERN      1.0 if `re.search(PATTERN, completion)` finds a match, else 0.0.
  exact_match        1.0 if `completion.strip() == str(row["reference"]).strip()`, else 0.0. Every row
                     needs a non-null `reference` (see `missing_reward_fields`).
  json_fields        the share of the fields of `row["reference"]` (a JSON object, or a string holding one)
                     that the first JSON object in the completion has with the same value; 0.0 if the
                     completion holds no object. Partial credit for extraction tasks: the object may sit in
                     chatter or a fence, so pair it with json_valid to pay for the bare object. A key the
                     completion lacks counts as null (it matches a null reference value).
  length_penalty     -max(0, words - N) / N with N = 50: 0.0 up to N words, -1.0 at 2N, -2.0 at 3N, ...
  length_penalty:N   the same with a target of N words (a positive integer).
  grader:PATH        the score of the OpenAI grader object (reinforcement fine-tuning's `grader`: string_check,
                     text_similarity, python, score_model or multi) in JSON file PATH, e.g.
                     {"type": "string_check", "name": "answer", "operation": "eq",
                      "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"}.
                     PATH is read and the grader checked once, when the reward is built; the row fields its
                     templates read are required in every row. Types, templates and formulas:
                     rollout/graders.py. A python grader runs in a process of its own, with a timeout of 10 s
                     per call (the environment variable TUNESMITH_GRADER_TIMEOUT_S changes it).

Your own reward: `module:function`, e.g. `my_rewards:score` for `score` in `my_rewards.py`. The module is
imported when the reward is built, from sys.path with the current directory added at its end (so installed
packages win over a local file of the same name). The function is called as `function(prompt, completion,
row)` and must return a finite real number (int, float or bool); None, NaN, inf or a string is an error
naming the reward and the row, and so is an exception raised inside the function.

Spec grammar, for each `--reward` value (the flag may be repeated; the values are concatenated):
  value  := item ("," item)*
  item   := NAME | NAME ":" ARG | MODULE ":" FUNCTION
`regex:` consumes the rest of its value, commas included: `--reward json_valid,regex:^\\d{1,3}$` is two
rewards. Put a regex last in its value, or give it its own `--reward`. Other arguments (a schema or grader
path, a length target) end at the next comma. Whitespace around items is ignored; an empty item, the same spec
twice, or an unknown name is a ConfigError. Built-in names win over a user module of the same name.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import numbers
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.eval.structured import extract_json_object

RewardFn = Callable[[list[dict], str, dict], float]

DEFAULT_LENGTH_TARGET = 50  # words


class RewardError(TunesmithError):
    """A reward function failed on one completion: it raised, or returned something other than a finite
    number. The message starts with the row (`FILE:LINE` when known) and names the reward spec."""


@dataclass(frozen=True)
class NamedReward:
    name: str  # the spec as given, e.g. "regex:^yes" or "my_rewards:score"; the key in per-reward results
    fn: RewardFn
    required_fields: frozenset[str] = frozenset()  # row fields the reward reads, checked before scoring


# ---------------------------------------------------------------- built-ins

_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL | re.IGNORECASE)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_completion(completion: str) -> tuple[bool, Any]:
    """(True, value) if the whole completion, stripped and with one optional ```json fence removed, is
    one JSON value; else (False, None). NaN and Infinity are refused, as JSON has no such values."""
    text = completion.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


# Not eval.structured.extract_json_object: that one finds an object anywhere in the text, which is right
# for scoring but as a reward would pay a model for wrapping its JSON in chatter.
def json_valid(prompt: list[dict], completion: str, row: dict) -> float:
    """1.0 if the completion is exactly one JSON object (whitespace and a ```json fence allowed), else 0.0."""
    ok, value = parse_json_completion(completion)
    return 1.0 if ok and isinstance(value, dict) else 0.0


def exact_match(prompt: list[dict], completion: str, row: dict) -> float:
    """1.0 if completion.strip() == str(row["reference"]).strip(), else 0.0."""
    return 1.0 if completion.strip() == str(row["reference"]).strip() else 0.0


def reference_object(row: dict) -> dict:
    """row["reference"] as a dict: a JSON object as is, or a string holding one."""
    reference = row["reference"]
    if isinstance(reference, str):
        try:
            reference = json.loads(reference)
        except ValueError:
            raise ValueError("`reference` is a string that is not JSON; json_fields needs a JSON object") from None
    if not isinstance(reference, dict) or not reference:
        raise ValueError(f"`reference` must be a non-empty JSON object for json_fields, got {type(reference).__name__}")
    return reference


def json_fields(prompt: list[dict], completion: str, row: dict) -> float:
    """Share of the reference object's fields that the completion's first JSON object matches exactly."""
    reference = reference_object(row)
    value = extract_json_object(completion)
    if value is None:
        return 0.0
    return sum(value.get(k) == v for k, v in reference.items()) / len(reference)


def json_schema_reward(spec: str, path: str) -> RewardFn:
    """A reward that is 1.0 if the completion parses (as in json_valid, any JSON value) and validates
    against the JSON Schema in `path`, else 0.0. The file is read and checked here, once."""
    from jsonschema.exceptions import SchemaError  # heavy: deferred until a schema reward is built
    from jsonschema.validators import validator_for

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the JSON Schema for reward '{spec}': {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path}: the JSON Schema for reward '{spec}' is not valid JSON: {e}") from None
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
    except SchemaError as e:
        raise ConfigError(f"{path}: not a valid JSON Schema (reward '{spec}'): {e.message}") from None
    validator = cls(schema)

    def json_schema(prompt: list[dict], completion: str, row: dict) -> float:
        """1.0 if the completion is JSON that validates against the schema, else 0.0."""
        ok, value = parse_json_completion(completion)
        return 1.0 if ok and validator.is_valid(value) else 0.0

    return json_schema


def grader_reward(spec: str, path: str) -> RewardFn:
    """The OpenAI grader in JSON file `path` as a reward; its `required_fields` are the row fields it reads."""
    from tunesmith.rollout.graders import load_grader_file  # nltk, rouge-score, torch: only when one is used

    return load_grader_file(path)


def regex_reward(spec: str, pattern: str) -> RewardFn:
    """A reward that is 1.0 if re.search(pattern, completion) matches, else 0.0."""
    if not pattern:
        raise ConfigError(f"reward '{spec}': empty pattern (it would match every completion)")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"reward '{spec}': invalid regular expression: {e}") from None

    def regex(prompt: list[dict], completion: str, row: dict) -> float:
        """1.0 if the pattern is found anywhere in the completion, else 0.0."""
        return 1.0 if compiled.search(completion) else 0.0

    return regex


def length_penalty_reward(spec: str, target: str | None) -> RewardFn:
    """A reward of -max(0, words - target) / target: 0.0 within the target, -1.0 per extra `target` words."""
    if target is None:
        n = DEFAULT_LENGTH_TARGET
    elif re.fullmatch(r"[0-9]+", target) and int(target) > 0:
        n = int(target)
    else:
        raise ConfigError(f"reward '{spec}': the target must be a positive whole number of words, got '{target}'")

    def length_penalty(prompt: list[dict], completion: str, row: dict) -> float:
        """-max(0, words - target) / target, where words = len(completion.split())."""
        return -max(0, len(completion.split()) - n) / n

    return length_penalty


# name -> (builder(spec, arg) -> fn, whether ARG is required/allowed/refused, row fields it reads); `arg` is
# typed Any: build_reward passes a str to the builders that require one, None or a str to the others
_NO_ARG, _ARG, _OPTIONAL_ARG = "none", "required", "optional"
BUILTINS: dict[str, tuple[Callable[[str, Any], RewardFn], str, frozenset[str]]] = {
    "json_valid": (lambda spec, arg: json_valid, _NO_ARG, frozenset()),
    "json_schema": (json_schema_reward, _ARG, frozenset()),
    "regex": (regex_reward, _ARG, frozenset()),
    "exact_match": (lambda spec, arg: exact_match, _NO_ARG, frozenset({"reference"})),
    "length_penalty": (length_penalty_reward, _OPTIONAL_ARG, frozenset()),
    "json_fields": (lambda spec, arg: json_fields, _NO_ARG, frozenset({"reference"})),
    "grader": (grader_reward, _ARG, frozenset()),  # its fields come from the grader's templates
}
_USAGE = {
    "json_schema": "json_schema:PATH",
    "regex": "regex:PATTERN",
    "length_penalty": "length_penalty[:N]",
    "grader": "grader:PATH",
}


def _builtin_list() -> str:
    return ", ".join(_USAGE.get(name, name) for name in BUILTINS)


def _builtin_hint(name: str, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.6)
    return f" (did you mean {prefix}'{_USAGE.get(close[0], close[0])}'?)" if close else ""


# ---------------------------------------------------------------- user functions

_USER_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _add_cwd_to_path() -> None:
    # `python -m` puts the current directory on sys.path but the `tunesmith` script does not; at the end,
    # so that a local file cannot shadow an installed package.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def load_user_reward(spec: str) -> RewardFn:
    """Import `module:function` and check that it is callable as function(prompt, completion, row)."""
    module_name, _, attr = spec.partition(":")
    if not _USER_SPEC.fullmatch(spec):
        hint = _builtin_hint(module_name, "the built-in ")
        raise ConfigError(f"reward '{spec}': expected module:function, e.g. my_rewards:score{hint}")
    _add_cwd_to_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            hint = _builtin_hint(module_name, "the built-in ")
            raise ConfigError(
                f"reward '{spec}': no module named '{module_name}' in the current directory or on sys.path{hint}"
            ) from None
        raise ConfigError(f"reward '{spec}': importing '{module_name}' failed: {e}") from e
    except Exception as e:
        raise ConfigError(f"reward '{spec}': importing '{module_name}' failed: {type(e).__name__}: {e}") from e
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            names = [n for n in dir(fn) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"reward '{spec}': '{module_name}' has no attribute '{attr}'{hint}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"reward '{spec}': '{attr}' is a {type(fn).__name__}, not a function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C functions have none; find out when called
        return fn
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise ConfigError(
            f"reward '{spec}': must take (prompt, completion, row), but its signature is {signature}"
        ) from None
    return fn


# ---------------------------------------------------------------- specs


def _split_value(value: str) -> list[str]:
    """Split one --reward value on commas; `regex:` takes the rest of the value, commas included."""
    items = []
    rest = value
    while True:
        head = rest.lstrip()
        if head.startswith("regex:"):
            items.append(head)
            return items
        item, comma, rest = rest.partition(",")
        items.append(item.strip())
        if not comma:
            return items


def build_reward(spec: str) -> NamedReward:
    """One reward from one item of a --reward value: a built-in name, NAME:ARG, or module:function."""
    name, colon, arg = spec.partition(":")
    if name in BUILTINS:
        builder, takes, fields = BUILTINS[name]
        if colon and takes == _NO_ARG:
            raise ConfigError(f"reward '{spec}': '{name}' takes no argument")
        if not colon and takes == _ARG:
            raise ConfigError(f"reward '{spec}': '{name}' needs an argument: {_USAGE[name]}")
        fn = builder(spec, arg if colon else None)
        return NamedReward(spec, fn, fields | getattr(fn, "required_fields", frozenset()))
    if colon:
        return NamedReward(spec, load_user_reward(spec))
    raise ConfigError(
        f"unknown reward '{spec}'{_builtin_hint(name)}; built-in: {_builtin_list()}; or module:function for your own"
    )


def parse_reward_specs(spec: str | Sequence[str]) -> list[NamedReward]:
    """Build every reward named in one --reward value or a list of them (the flag repeated), in order."""
    values = [spec] if isinstance(spec, str) else list(spec)
    rewards: list[NamedReward] = []
    for value in values:
        for item in _split_value(value):
            if not item:
                raise ConfigError(f"--reward '{value}': empty reward name (a stray comma?)")
            if any(r.name == item for r in rewards):
                raise ConfigError(f"--reward: '{item}' is given twice")
            rewards.append(build_reward(item))
    if not rewards:
        raise ConfigError(f"--reward: no reward given; built-in: {_builtin_list()}")
    return rewards


# ---------------------------------------------------------------- data checks and scoring


def required_fields(rewards: Sequence[NamedReward]) -> set[str]:
    """The row fields that the rewards read (e.g. {"reference"} for exact_match)."""
    return set().union(*(r.required_fields for r in rewards))


def missing_reward_fields(rewards: Sequence[NamedReward], rows: Iterable[tuple[str, dict]]) -> list[str]:
    """One `FILE:LINE: missing `field` (needed by reward 'name')` per problem, for rows given as
    (where, row) with `where` = "FILE:LINE". A null value counts as a problem too."""
    needs = {field: [r.name for r in rewards if field in r.required_fields] for field in required_fields(rewards)}
    problems = []
    for where, row in rows:
        for field in sorted(needs):
            by = ", ".join(f"'{n}'" for n in needs[field])
            if field not in row:
                problems.append(f"{where}: missing `{field}` (needed by reward {by})")
            elif row[field] is None:
                problems.append(f"{where}: `{field}` is null (needed by reward {by})")
    return problems


def _call(reward: NamedReward, prompt: list[dict], completion: str, row: dict, where: str) -> float:
    try:
        value = reward.fn(prompt, completion, row)
    except Exception as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise RewardError(
            f"{where}: reward '{reward.name}' raised {type(e).__name__}: {e} (at {frame.filename}:{frame.lineno})"
        ) from e
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise RewardError(
            f"{where}: reward '{reward.name}' returned {value!r} ({type(value).__name__}); "
            "a reward must return a finite number"
        )
    return float(value)


def score_completions(
    rewards: Sequence[NamedReward],
    prompts: Sequence[list[dict]],
    completions: Sequence[str],
    rows: Sequence[dict],
    weights: Sequence[float] | None = None,
    where: Sequence[str] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Score N completions with every reward: (total, {reward name: N unweighted scores}).

    prompts[i], completions[i] and rows[i] belong together (GRPO repeats a prompt and its row once per
    completion). total[i] = sum_k weights[k] * score_k[i], every weight 1.0 by default. `where[i]` names the
    row ("FILE:LINE") in error messages; without it, "completion i". Rows missing a field a reward reads are
    a DataError listing them all, before any reward runs.
    """
    n = len(completions)
    if len(prompts) != n or len(rows) != n or (where is not None and len(where) != n):
        raise ValueError(
            f"got {len(prompts)} prompts, {n} completions, {len(rows)} rows"
            + (f", {len(where)} locations" if where is not None else "")
        )
    if weights is None:
        weights = [1.0] * len(rewards)
    if len(weights) != len(rewards):
        names = ", ".join(r.name for r in rewards)
        raise ConfigError(f"reward weights: got {len(weights)} for {len(rewards)} rewards ({names})")
    if not all(isinstance(w, numbers.Real) and math.isfinite(w) for w in weights):
        raise ConfigError(f"reward weights: must be finite numbers, got {list(weights)}")
    where = list(where) if where is not None else [f"completion {i}" for i in range(n)]
    problems = missing_reward_fields(rewards, zip(where, rows))
    if problems:
        raise DataError(problems)
    per_reward = {
        r.name: [_call(r, p, c, row, w) for p, c, row, w in zip(prompts, completions, rows, where)] for r in rewards
    }
    total = [sum(float(w) * per_reward[r.name][i] for r, w in zip(rewards, weights)) for i in range(n)]
    return total, per_reward
