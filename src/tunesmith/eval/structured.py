"""Scoring for structured-output (JSON extraction) tasks.

Pure functions with no torch dependency, used to evaluate completions such as
those of the bundled ``tunesmith demo`` task, where the model must answer with
a JSON object whose keys are a fixed list of fields.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

_DECODER = json.JSONDecoder()


def extract_json_object(text: str) -> dict | None:
    """Return the first JSON object found in a model completion, or ``None``.

    Leading and trailing text (including Markdown code fences such as
    ```` ```json ... ``` ````) is tolerated: the text is scanned for each ``{``
    in turn and the first position at which a complete JSON value can be
    decoded is used. If that value is a ``dict`` it is returned; a position
    whose decoding fails is skipped. Returns ``None`` when no JSON object can
    be decoded (or ``text`` is not a string).

    Note: if an outer object is truncated or malformed, a well-formed nested
    object inside it may be returned instead.
    """
    if not isinstance(text, str):
        return None
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)  # pragma: no cover - "{" always decodes to a dict
    return None


def score_structured(
    predictions: list[str],
    references: list[dict],
    fields: Sequence[str],
) -> dict[str, Any]:
    """Score JSON predictions against reference dicts, field by field.

    Each prediction is parsed with :func:`extract_json_object`. For each
    example and field, the prediction scores 1 if ``pred.get(field) ==
    reference[field]`` and 0 otherwise; a prediction that does not parse to a
    dict scores 0 on every field. (A key missing from a parsed prediction is
    treated as ``None``, so it matches a ``null`` reference value.)

    Returns a dict with:

    * ``"json_valid"``: fraction of predictions that parse to a dict;
    * ``"field_accuracy"``: mean exact-match over all examples and fields;
    * ``"per_field"``: ``{field: accuracy}`` for each field, in ``fields`` order;
    * ``"n"``: number of examples.

    With no examples, all fractions are ``0.0``.

    Raises:
        ValueError: if ``predictions`` and ``references`` differ in length, or
            ``fields`` is empty.
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    fields = list(fields)
    if not fields:
        raise ValueError("fields must not be empty")
    n = len(predictions)
    correct = {f: 0 for f in fields}
    valid = 0
    for pred_text, ref in zip(predictions, references):
        pred = extract_json_object(pred_text)
        if pred is None:
            continue
        valid += 1
        for f in fields:
            if pred.get(f) == ref[f]:
                correct[f] += 1
    if n == 0:
        per_field = {f: 0.0 for f in fields}
        return {"json_valid": 0.0, "field_accuracy": 0.0, "per_field": per_field, "n": 0}
    per_field = {f: correct[f] / n for f in fields}
    return {
        "json_valid": valid / n,
        "field_accuracy": sum(correct.values()) / (n * len(fields)),
        "per_field": per_field,
        "n": n,
    }
