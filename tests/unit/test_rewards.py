"""Tests for tunesmith.rollout.rewards: each built-in by hand, the spec grammar, user functions, scoring."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.rollout.rewards import (
    NamedReward,
    RewardError,
    exact_match,
    json_fields,
    json_valid,
    missing_reward_fields,
    parse_reward_specs,
    required_fields,
    score_completions,
)

PROMPT = [{"role": "user", "content": "Answer in JSON."}]


def reward(spec: str) -> NamedReward:
    (built,) = parse_reward_specs(spec)
    return built


def score(spec: str, completion: str, row: dict | None = None) -> float:
    return reward(spec).fn(PROMPT, completion, row or {})


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write `name.py` into tmp_path, importable for this test only."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
        importlib.invalidate_caches()
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------- json_valid


@pytest.mark.parametrize(
    "completion",
    [
        '{"a": 1}',
        '  \n{"a": [1, 2], "b": null}\n ',
        '```json\n{"a": 1}\n```',
        '```\n{"a": 1}\n```',
        '```JSON {"a": 1} ```',
        "{}",
    ],
)
def test_json_valid_accepts_one_object(completion):
    assert json_valid(PROMPT, completion, {}) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        '[{"a": 1}]',  # an array, not an object
        '"text"',
        "42",
        "",
        '{"a": 1',  # truncated
        'Here you go: {"a": 1}',  # text before
        '{"a": 1} hope that helps',  # text after
        '```json\n{"a": 1}\n``` and more',  # text after the fence
        '{"a": 1}\n{"a": 2}',  # two objects
        '{"a": NaN}',  # not JSON
        "```python\n{}\n```",
    ],
)
def test_json_valid_refuses_anything_else(completion):
    assert json_valid(PROMPT, completion, {}) == 0.0


# ---------------------------------------------------------------- json_schema


def write_schema(tmp_path: Path, schema) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def test_json_schema_pass_and_fail(tmp_path):
    path = write_schema(
        tmp_path,
        {
            "type": "object",
            "properties": {"intent": {"enum": ["refund", "other"]}, "n": {"type": "integer"}},
            "required": ["intent"],
        },
    )
    spec = f"json_schema:{path}"
    assert score(spec, '{"intent": "refund", "n": 3}') == 1.0
    assert score(spec, '```json\n{"intent": "other"}\n```') == 1.0
    assert score(spec, '{"intent": "cancel"}') == 0.0  # not in the enum
    assert score(spec, '{"n": 3}') == 0.0  # required key missing
    assert score(spec, '{"intent": "refund", "n": "3"}') == 0.0  # wrong type
    assert score(spec, 'sure: {"intent": "refund"}') == 0.0  # not JSON as a whole


def test_json_schema_accepts_any_json_value_the_schema_allows(tmp_path):
    path = write_schema(tmp_path, {"type": "array", "items": {"type": "integer"}})
    assert score(f"json_schema:{path}", "[1, 2]") == 1.0
    assert score(f"json_schema:{path}", "[1, 2.5]") == 0.0


def test_json_schema_is_read_once(tmp_path):
    path = write_schema(tmp_path, {"type": "object"})
    built = reward(f"json_schema:{path}")
    path.unlink()
    assert built.fn(PROMPT, "{}", {}) == 1.0


def test_json_schema_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=rf"{path}: cannot read the JSON Schema.*No such file"):
        parse_reward_specs(f"json_schema:{path}")


@pytest.mark.parametrize(
    "text, why", [("{bad", "not valid JSON"), ('{"type": 12}', "not a valid JSON Schema"), ("[1]", "not a valid")]
)
def test_json_schema_bad_file_names_the_path(tmp_path, text, why):
    path = tmp_path / "schema.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=why) as e:
        parse_reward_specs(f"json_schema:{path}")
    assert str(e.value).startswith(f"{path}: ")


# ---------------------------------------------------------------- regex


def test_regex_searches_anywhere():
    assert score(r"regex:\bref(und)?\b", "I want a refund please") == 1.0
    assert score(r"regex:\bref(und)?\b", "refunding") == 0.0
    assert score("regex:^yes$", "yes") == 1.0
    assert score("regex:^yes$", "yes!") == 0.0


def test_regex_keeps_commas_in_the_pattern():
    built = reward(r"regex:^\d{1,3}(,\d{3})*$")
    assert built.name == r"regex:^\d{1,3}(,\d{3})*$"
    assert built.fn(PROMPT, "1,234,567", {}) == 1.0
    assert built.fn(PROMPT, "1234,567", {}) == 0.0


def test_regex_consumes_the_rest_of_its_value():
    names = [r.name for r in parse_reward_specs(["json_valid,regex:a,b,exact_match", "length_penalty"])]
    assert names == ["json_valid", "regex:a,b,exact_match", "length_penalty"]


@pytest.mark.parametrize("spec, why", [("regex:(", "invalid regular expression: missing \\)"), ("regex:", "empty")])
def test_regex_bad_pattern_is_a_config_error(spec, why):
    with pytest.raises(ConfigError, match=why) as e:
        parse_reward_specs(spec)
    assert f"'{spec}'" in str(e.value)


# ---------------------------------------------------------------- exact_match


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("Paris", "Paris", 1.0),
        ("  Paris\n", "Paris ", 1.0),  # only the ends are stripped
        ("paris", "Paris", 0.0),  # case matters
        ("Par is", "Paris", 0.0),
        ("42", 42, 1.0),  # the reference is compared as text
        ("42.0", 42, 0.0),
    ],
)
def test_exact_match(completion, reference, expected):
    assert exact_match(PROMPT, completion, {"reference": reference}) == expected


REF = {"name": "Ann", "order_id": "ORD-1", "product": None, "urgency": "high"}


@pytest.mark.parametrize(
    "completion, expected",
    [
        ('{"name": "Ann", "order_id": "ORD-1", "product": null, "urgency": "high"}', 1.0),
        ('{"name": "Ann", "order_id": "ORD-2", "product": null, "urgency": "low"}', 0.5),
        ('{"name": "Ann", "order_id": "ORD-1", "urgency": "high"}', 1.0),  # a missing key reads as null
        ('{"name": "Ann", "order_id": "ORD-1", "product": "", "urgency": "high", "extra": 1}', 0.75),
        ('Sure! ```json\n{"name": "ann", "order_id": "ORD-1"}\n``` Done.', 0.5),  # in chatter; case matters
        ('{"name": "Ann", "order_id": "ORD-1"', 0.0),  # no complete object
        ("no JSON here", 0.0),
        ('[{"name": "Ann"}]', 0.5),  # the first object found, even inside an array: name and product (null)
    ],
)
def test_json_fields_share_of_matching_values(completion, expected):
    assert json_fields(PROMPT, completion, {"reference": REF}) == pytest.approx(expected)
    assert json_fields(PROMPT, completion, {"reference": json.dumps(REF)}) == pytest.approx(expected)


@pytest.mark.parametrize("reference", ["not json", "[1, 2]", {}, 3])
def test_json_fields_refuses_a_reference_that_is_no_object(reference):
    with pytest.raises(RewardError, match=r"p\.jsonl:3: reward 'json_fields'.*reference"):
        score_completions(
            parse_reward_specs("json_fields"), [PROMPT], ['{"a": 1}'], [{"reference": reference}], where=["p.jsonl:3"]
        )


def test_required_fields_and_file_line_problems():
    rewards = parse_reward_specs("json_valid,exact_match")
    assert required_fields(rewards) == {"reference"}
    assert required_fields(parse_reward_specs("json_valid")) == set()
    assert required_fields(parse_reward_specs("json_fields")) == {"reference"}
    rows = [
        ("train.jsonl:1", {"prompt": "a", "reference": "x"}),
        ("train.jsonl:2", {"prompt": "b"}),
        ("train.jsonl:4", {"prompt": "c", "reference": None}),
    ]
    assert missing_reward_fields(rewards, rows) == [
        "train.jsonl:2: missing `reference` (needed by reward 'exact_match')",
        "train.jsonl:4: `reference` is null (needed by reward 'exact_match')",
    ]


# ---------------------------------------------------------------- length_penalty


@pytest.mark.parametrize(
    "spec, words, expected",
    [
        ("length_penalty", 10, 0.0),
        ("length_penalty", 50, 0.0),  # the default target is 50 words
        ("length_penalty", 51, -1 / 50),
        ("length_penalty", 75, -0.5),  # -(75 - 50) / 50
        ("length_penalty", 150, -2.0),
        ("length_penalty:4", 4, 0.0),
        ("length_penalty:4", 6, -0.5),  # -(6 - 4) / 4
        ("length_penalty:4", 12, -2.0),
        ("length_penalty:1", 0, 0.0),
    ],
)
def test_length_penalty_by_hand(spec, words, expected):
    assert score(spec, " ".join(["word"] * words)) == pytest.approx(expected)


def test_length_penalty_counts_whitespace_separated_words():
    assert score("length_penalty:2", "one\ntwo\t three   four") == pytest.approx(-1.0)


@pytest.mark.parametrize("target", ["0", "-5", "1.5", "ten", ""])
def test_length_penalty_bad_target(target):
    with pytest.raises(ConfigError, match="positive whole number"):
        parse_reward_specs(f"length_penalty:{target}")


# ---------------------------------------------------------------- the spec parser


def test_parse_several_values_and_commas():
    rewards = parse_reward_specs(["json_valid, exact_match", "length_penalty:20"])
    assert [r.name for r in rewards] == ["json_valid", "exact_match", "length_penalty:20"]
    assert all(callable(r.fn) for r in rewards)


def test_parse_a_single_string():
    assert [r.name for r in parse_reward_specs("exact_match")] == ["exact_match"]


def test_unknown_name_suggests_a_built_in():
    with pytest.raises(ConfigError, match=r"unknown reward 'json_vaild' \(did you mean 'json_valid'\?\)") as e:
        parse_reward_specs("exact_match,json_vaild")
    for name in ("json_valid", "json_schema:PATH", "regex:PATTERN", "exact_match", "length_penalty"):
        assert name in str(e.value)


def test_unknown_name_without_a_close_match_lists_the_built_ins():
    with pytest.raises(ConfigError, match="unknown reward 'bleu'; built-in: json_valid, "):
        parse_reward_specs("bleu")


@pytest.mark.parametrize(
    "spec, why",
    [
        ("regx:^a", "expected module:function"),  # not a module:function shape
        ("regx:yes", "no module named 'regx'"),  # could be one, but there is no such module
        ("json_schme:s.json", "no module named 'json_schme'"),
        ("json_schme:schemas/s.json", "expected module:function"),
    ],
)
def test_misspelt_built_in_with_argument_suggests_it(spec, why):
    with pytest.raises(
        ConfigError, match=rf"{why}.*\(did you mean the built-in '(regex:PATTERN|json_schema:PATH)'\?\)"
    ):
        parse_reward_specs(spec)


@pytest.mark.parametrize(
    "spec, why",
    [
        ("json_valid:x", "takes no argument"),
        ("exact_match:answer", "takes no argument"),
        ("json_schema", "needs an argument: json_schema:PATH"),
        ("regex", "needs an argument: regex:PATTERN"),
        ("json_valid,,exact_match", "empty reward name"),
        ("json_valid,", "empty reward name"),
        ("json_valid,json_valid", "'json_valid' is given twice"),
        ("my rewards:score", "expected module:function"),
    ],
)
def test_bad_specs(spec, why):
    with pytest.raises(ConfigError, match=why):
        parse_reward_specs(spec)


def test_the_same_reward_in_two_flags_is_an_error():
    with pytest.raises(ConfigError, match="given twice"):
        parse_reward_specs(["json_valid", " json_valid"])


def test_no_reward_at_all():
    with pytest.raises(ConfigError, match="no reward given"):
        parse_reward_specs([])


# ---------------------------------------------------------------- user functions


def test_user_function_is_imported_and_called(user_module):
    user_module(
        "ts_rewards_ok",
        "def score(prompt, completion, row):\n    return len(completion) / 10 + len(prompt) + row['bonus']\n",
    )
    (built,) = parse_reward_specs("json_valid,ts_rewards_ok:score")[1:]
    assert built.name == "ts_rewards_ok:score"
    assert built.fn(PROMPT, "abcde", {"bonus": 2}) == pytest.approx(3.5)


def test_user_module_in_the_current_directory(tmp_path, monkeypatch):
    # as under the `tunesmith` script: the current directory is not on sys.path until the reward adds it
    (tmp_path / "ts_rewards_cwd.py").write_text("def score(p, c, r):\n    return 1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    importlib.invalidate_caches()
    try:
        assert reward("ts_rewards_cwd:score").fn(PROMPT, "", {}) == 1
        assert sys.path[-1] == str(tmp_path)
    finally:
        sys.modules.pop("ts_rewards_cwd", None)


def test_user_module_not_found():
    with pytest.raises(ConfigError, match="reward 'ts_no_such_module:score': no module named 'ts_no_such_module'"):
        parse_reward_specs("ts_no_such_module:score")


def test_user_module_failing_to_import(user_module):
    user_module("ts_rewards_broken", "import ts_no_such_dependency\n")
    with pytest.raises(ConfigError, match="importing 'ts_rewards_broken' failed: No module named 'ts_no_such_dep"):
        parse_reward_specs("ts_rewards_broken:score")
    user_module("ts_rewards_raises", "raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="importing 'ts_rewards_raises' failed: RuntimeError: boom"):
        parse_reward_specs("ts_rewards_raises:score")


def test_user_attribute_missing_or_not_callable(user_module):
    user_module("ts_rewards_attrs", "THRESHOLD = 3\ndef score(p, c, r):\n    return 0.0\n")
    with pytest.raises(ConfigError, match=r"has no attribute 'scor' \(did you mean 'score'\?\)"):
        parse_reward_specs("ts_rewards_attrs:scor")
    with pytest.raises(ConfigError, match="'THRESHOLD' is a int, not a function"):
        parse_reward_specs("ts_rewards_attrs:THRESHOLD")


def test_user_function_with_the_wrong_arguments(user_module):
    user_module("ts_rewards_arity", "def score(completion):\n    return 0.0\n")
    with pytest.raises(
        ConfigError, match=r"must take \(prompt, completion, row\), but its signature is \(completion\)"
    ):
        parse_reward_specs("ts_rewards_arity:score")


@pytest.mark.parametrize("returned", ["None", "float('nan')", "float('inf')", "'0.5'", "[1.0]"])
def test_user_function_returning_a_non_number(user_module, returned):
    name = f"ts_rewards_ret{abs(hash(returned))}"
    user_module(name, f"def score(p, c, r):\n    return {returned}\n")
    rewards = parse_reward_specs(f"json_valid,{name}:score")
    with pytest.raises(RewardError, match=rf"^data.jsonl:7: reward '{name}:score' returned .*finite number"):
        score_completions(rewards, [PROMPT], ["{}"], [{}], where=["data.jsonl:7"])


def test_user_function_raising_names_the_reward_and_row(user_module):
    user_module("ts_rewards_raise", "def score(p, c, r):\n    return 1 / len(c)\n")
    rewards = parse_reward_specs("ts_rewards_raise:score")
    with pytest.raises(RewardError) as e:
        score_completions(rewards, [PROMPT, PROMPT], ["ok", ""], [{}, {}], where=["d.jsonl:3", "d.jsonl:9"])
    message = str(e.value)
    assert message.startswith("d.jsonl:9: reward 'ts_rewards_raise:score' raised ZeroDivisionError: division by zero")
    assert "ts_rewards_raise.py:2" in message
    assert isinstance(e.value, TunesmithError) and isinstance(e.value.__cause__, ZeroDivisionError)


def test_user_function_may_return_int_or_bool(user_module):
    user_module("ts_rewards_int", "def score(p, c, r):\n    return c == 'yes'\n")
    total, per = score_completions(parse_reward_specs("ts_rewards_int:score"), [PROMPT] * 2, ["yes", "no"], [{}, {}])
    assert per == {"ts_rewards_int:score": [1.0, 0.0]} and all(type(v) is float for v in total)


def test_error_without_where_names_the_completion_index(user_module):
    user_module("ts_rewards_none", "def score(p, c, r):\n    return None if c == 'b' else 0.0\n")
    with pytest.raises(RewardError, match="^completion 1: reward 'ts_rewards_none:score' returned None"):
        score_completions(parse_reward_specs("ts_rewards_none:score"), [PROMPT] * 2, ["a", "b"], [{}, {}])


# ---------------------------------------------------------------- score_completions


def test_score_completions_sums_rewards():
    rewards = parse_reward_specs(["json_valid,exact_match", "length_penalty:2"])
    completions = ['{"a": 1}', "four words right here", '{"a": 1}']
    rows = [{"reference": '{"a": 1}'}, {"reference": "x"}, {"reference": "y"}]
    total, per = score_completions(rewards, [PROMPT] * 3, completions, rows)
    assert per == {
        "json_valid": [1.0, 0.0, 1.0],
        "exact_match": [1.0, 0.0, 0.0],
        "length_penalty:2": [0.0, -1.0, 0.0],  # -(4 - 2) / 2
    }
    assert total == [2.0, -1.0, 1.0]


def test_score_completions_weighted():
    rewards = parse_reward_specs("json_valid,length_penalty:2")
    total, per = score_completions(rewards, [PROMPT] * 2, ["{}", "a b c d e f"], [{}, {}], weights=[2.0, 0.5])
    assert per["length_penalty:2"] == [0.0, -2.0]
    assert total == [2.0, -1.0]  # 2*1 + 0.5*0 ; 2*0 + 0.5*(-2)


def test_score_completions_checks_rows_before_scoring():
    rewards = parse_reward_specs("exact_match")
    with pytest.raises(DataError) as e:
        score_completions(rewards, [PROMPT] * 2, ["a", "b"], [{}, {"reference": "b"}], where=["t.jsonl:1", "t.jsonl:2"])
    assert e.value.problems == ["t.jsonl:1: missing `reference` (needed by reward 'exact_match')"]


def test_score_completions_bad_shapes_and_weights():
    rewards = parse_reward_specs("json_valid")
    with pytest.raises(ValueError, match="got 1 prompts, 2 completions"):
        score_completions(rewards, [PROMPT], ["a", "b"], [{}, {}])
    with pytest.raises(ConfigError, match=r"got 2 for 1 rewards \(json_valid\)"):
        score_completions(rewards, [PROMPT], ["a"], [{}], weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="finite"):
        score_completions(rewards, [PROMPT], ["a"], [{}], weights=[float("nan")])


def test_score_completions_empty_batch():
    assert score_completions(parse_reward_specs("json_valid"), [], [], []) == ([], {"json_valid": []})
