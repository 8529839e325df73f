"""Tests for tunesmith.eval.structured (hand-computed expectations)."""

from __future__ import annotations

import pytest

from tunesmith.eval.structured import extract_json_object, score_structured

FIELDS = ("name", "order_id", "product", "intent", "urgency")


# ---------------------------------------------------------------- extraction


def test_extract_plain_object():
    assert extract_json_object('{"a": 1, "b": null}') == {"a": 1, "b": None}


def test_extract_with_surrounding_text():
    text = 'Sure! Here is the JSON: {"intent": "refund"} Hope that helps.'
    assert extract_json_object(text) == {"intent": "refund"}


def test_extract_code_fence():
    text = '```json\n{"name": "Priya", "urgency": "high"}\n```'
    assert extract_json_object(text) == {"name": "Priya", "urgency": "high"}


def test_extract_first_of_two_objects():
    assert extract_json_object('{"a": 1}\n{"a": 2}') == {"a": 1}


def test_extract_nested_object_is_kept_whole():
    assert extract_json_object('x {"a": {"b": [1, 2]}} y') == {"a": {"b": [1, 2]}}


def test_extract_skips_broken_brace_then_finds_object():
    assert extract_json_object('{oops} then {"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    "text",
    ["", "no json here", "[1, 2, 3]", '"just a string"', "42", '{"a": 1', "{'a': 1}", "null"],
)
def test_extract_returns_none(text):
    assert extract_json_object(text) is None


def test_extract_non_string_returns_none():
    assert extract_json_object(None) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------- scoring

REF_A = {"name": "Priya", "order_id": "ORD-12345", "product": None, "intent": "refund", "urgency": "high"}
REF_B = {"name": None, "order_id": None, "product": "CloudVault Pro", "intent": "billing", "urgency": "low"}


def test_perfect_predictions():
    preds = [
        '{"name": "Priya", "order_id": "ORD-12345", "product": null, "intent": "refund", "urgency": "high"}',
        '```json\n{"name": null, "order_id": null, "product": "CloudVault Pro", "intent": "billing", "urgency": "low"}\n```',
    ]
    out = score_structured(preds, [REF_A, REF_B], FIELDS)
    assert out == {
        "json_valid": 1.0,
        "field_accuracy": 1.0,
        "per_field": {f: 1.0 for f in FIELDS},
        "n": 2,
    }


def test_partial_and_invalid_predictions():
    preds = [
        # 3/5 correct: wrong name, wrong urgency; product null matches null.
        '{"name": "Priya Sharma", "order_id": "ORD-12345", "product": null, "intent": "refund", "urgency": "normal"}',
        # invalid JSON: 0/5
        '{"name": null, "order_id": ',
        # missing keys count as None: name, order_id match null refs;
        # product matches; intent wrong; urgency missing vs "low" -> wrong. 3/5.
        'Answer: {"product": "CloudVault Pro", "intent": "refund"}',
        # 4/5: order_id wrong case.
        '{"name": "Priya", "order_id": "ord-12345", "product": null, "intent": "refund", "urgency": "high"}',
    ]
    refs = [REF_A, REF_A, REF_B, REF_A]
    out = score_structured(preds, refs, FIELDS)
    assert out["n"] == 4
    assert out["json_valid"] == pytest.approx(3 / 4)
    assert out["per_field"] == pytest.approx(
        {
            "name": 2 / 4,  # ex3 (None==None), ex4
            "order_id": 2 / 4,  # ex1, ex3
            "product": 3 / 4,  # ex1, ex3, ex4
            "intent": 2 / 4,  # ex1, ex4
            "urgency": 1 / 4,  # ex4
        }
    )
    assert out["field_accuracy"] == pytest.approx((3 + 0 + 3 + 4) / 20)
    assert list(out["per_field"]) == list(FIELDS)


def test_null_prediction_vs_value_is_wrong():
    out = score_structured(['{"name": null}'], [{"name": "Ana"}], ["name"])
    assert out["per_field"] == {"name": 0.0}
    assert out["json_valid"] == 1.0


def test_non_object_json_is_invalid():
    out = score_structured(["[1, 2]"], [{"name": None}], ["name"])
    # Unparseable predictions score 0 even where the reference is null.
    assert out == {"json_valid": 0.0, "field_accuracy": 0.0, "per_field": {"name": 0.0}, "n": 1}


def test_subset_of_fields_only():
    out = score_structured(['{"intent": "refund", "urgency": "low"}'], [REF_A], ("intent", "urgency"))
    assert out["per_field"] == {"intent": 1.0, "urgency": 0.0}
    assert out["field_accuracy"] == 0.5


def test_empty_inputs():
    out = score_structured([], [], FIELDS)
    assert out["n"] == 0
    assert out["json_valid"] == 0.0 and out["field_accuracy"] == 0.0


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        score_structured(["{}"], [], FIELDS)


def test_empty_fields_raises():
    with pytest.raises(ValueError):
        score_structured(["{}"], [{}], [])
