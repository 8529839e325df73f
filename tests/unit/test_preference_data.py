"""Reading DPO preference data (OpenAI preference and prompt/chosen/rejected JSONL), every problem as FILE:LINE."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tunesmith.data.preference import (
    ParsedPreferenceFile,
    PreferencePair,
    load_preference_file,
    read_preference_file,
)
from tunesmith.errors import DataError


def _m(role, content):
    return {"role": role, "content": content}


OPENAI = {
    "input": {"messages": [_m("system", "Be brief."), _m("user", "hi")]},
    "preferred_output": [_m("assistant", "hello")],
    "non_preferred_output": [_m("assistant", "go away")],
}
COMMON = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}


def _one_problem(tmp_path, bad, *, raw: bytes | None = None) -> str:
    """Write a good row, then the bad one on line 2; return the single problem reported."""
    path = tmp_path / "p.jsonl"
    if raw is not None:
        path.write_bytes(json.dumps(COMMON).encode() + b"\n" + raw + b"\n")
    else:
        write_jsonl(path, [COMMON, bad])
    parsed = read_preference_file(path)
    assert len(parsed.pairs) == 1, parsed.problems
    assert len(parsed.problems) == 1, parsed.problems
    problem = parsed.problems[0]
    assert problem.startswith(f"{path}:2: "), problem
    return problem


# --- formats that parse ----------------------------------------------------------------------------------------


def test_openai_format(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [OPENAI])
    parsed = read_preference_file(path)
    assert parsed.problems == []
    assert parsed.pairs == [
        PreferencePair(
            prompt=[_m("system", "Be brief."), _m("user", "hi")],
            chosen=[_m("assistant", "hello")],
            rejected=[_m("assistant", "go away")],
            where=f"{path}:1",
        )
    ]


def test_openai_multi_turn_prompt_and_extra_keys_ignored(tmp_path):
    row = {
        "input": {
            "messages": [_m("user", "a"), _m("assistant", "b"), {"role": "user", "content": "c", "name": "x"}],
            "tools": [],
        },
        "preferred_output": [_m("assistant", "yes")],
        "non_preferred_output": [_m("assistant", "no")],
    }
    pair = load_preference_file(write_jsonl(tmp_path / "p.jsonl", [row])).pairs[0]
    assert pair.prompt == [_m("user", "a"), _m("assistant", "b"), _m("user", "c")]  # only role and content kept


def test_common_format_strings(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [COMMON])
    parsed = load_preference_file(path)
    assert isinstance(parsed, ParsedPreferenceFile)
    assert parsed.pairs == [
        PreferencePair([_m("user", "hi")], [_m("assistant", "hello")], [_m("assistant", "go away")], f"{path}:1")
    ]
    assert parsed.identical == 0 and parsed.identical_lines == []


def test_common_format_lists(tmp_path):
    row = {
        "prompt": [_m("system", "s"), _m("user", "q")],
        "chosen": [_m("assistant", "good"), _m("assistant", "more")],
        "rejected": [_m("assistant", "bad")],
    }
    pair = load_preference_file(write_jsonl(tmp_path / "p.jsonl", [row])).pairs[0]
    assert pair.prompt == [_m("system", "s"), _m("user", "q")]
    assert pair.chosen == [_m("assistant", "good"), _m("assistant", "more")]
    assert pair.rejected == [_m("assistant", "bad")]


def test_common_format_mixed_string_and_list(tmp_path):
    row = {"prompt": [_m("user", "q")], "chosen": "good", "rejected": [_m("assistant", "bad")]}
    pair = load_preference_file(write_jsonl(tmp_path / "p.jsonl", [row])).pairs[0]
    assert pair.prompt == [_m("user", "q")]
    assert pair.chosen == [_m("assistant", "good")]
    assert pair.rejected == [_m("assistant", "bad")]


def test_both_formats_in_one_file(tmp_path):
    parsed = load_preference_file(write_jsonl(tmp_path / "p.jsonl", [OPENAI, COMMON]))
    assert [p.where.rsplit(":", 1)[1] for p in parsed.pairs] == ["1", "2"]


# --- every kind of problem -------------------------------------------------------------------------------------


def _openai(**changes):
    row = json.loads(json.dumps(OPENAI))
    for key, value in changes.items():
        if value is None:
            row.pop(key)
        else:
            row[key] = value
    return row


def _common(**changes):
    row = dict(COMMON)
    for key, value in changes.items():
        if value is None:
            row.pop(key)
        else:
            row[key] = value
    return row


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"prompt": ', "bad JSON"),
        ("[1, 2]", "each line must be a JSON object, got list"),
        ('"just a string"', "each line must be a JSON object, got str"),
        # neither format: the message names the keys of both
        (
            {"messages": [_m("user", "a"), _m("assistant", "b")]},
            "expected `input`, `preferred_output` and `non_preferred_output` (OpenAI preference format) "
            "or `prompt`, `chosen` and `rejected`; found keys: `messages`",
        ),
        ({"prompt": "a", "completion": "b", "chosen": "c", "rejected": "d", "input": {}}, "mixes keys of two formats"),
        # missing pieces
        (_openai(non_preferred_output=None), "missing `non_preferred_output`"),
        (_openai(preferred_output=None), "missing `preferred_output`"),
        (_openai(input=None), "missing `input`"),
        (_openai(input=[_m("user", "x")]), "`input`: must be an object with `messages`, got list"),
        (_openai(input={"msgs": []}), "`input`: missing `messages`"),
        (_common(rejected=None), "missing `rejected`"),
        (_common(chosen=None), "missing `chosen`"),
        (_common(prompt=None), "missing `prompt`"),
        # empty completions
        (_common(chosen=""), "`chosen`: empty"),
        (_common(rejected="  \n\t"), "`rejected`: empty"),
        (_common(chosen=[]), "`chosen`: empty list"),
        (_common(rejected=[_m("assistant", " ")]), "`rejected[0].content`: empty"),
        (_openai(preferred_output=[]), "`preferred_output`: empty list"),
        (_openai(non_preferred_output=[_m("assistant", "")]), "`non_preferred_output[0].content`: empty"),
        # completion roles
        (
            _openai(preferred_output=[_m("user", "x")]),
            "`preferred_output[0].role`: must be 'assistant', got 'user' (the prompt belongs in `input.messages`)",
        ),
        (
            _common(rejected=[_m("assistant", "ok"), _m("system", "x")]),
            "`rejected[1].role`: must be 'assistant', got 'system' (the prompt belongs in `prompt`)",
        ),
        (_common(chosen=[_m("user", "q"), _m("assistant", "a")]), "`chosen[0].role`: must be 'assistant', got 'user'"),
        # wrong types
        (_common(chosen=3), "`chosen`: must be a string or a list of assistant messages, got int"),
        (_openai(preferred_output="hello"), "`preferred_output`: must be a list of assistant messages, got str"),
        (_common() | {"prompt": None}, "`prompt`: must be a string or a list of messages, got null"),
        (_common(chosen=[_m("assistant", 5)]), "`chosen[0].content`: must be a string, got int"),
        (
            _common(rejected=[{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]),
            "`rejected[0].content`: must be a string, got list",
        ),
        (_openai(input={"messages": [_m("user", None)]}), "`input.messages[0].content`: must be a string, got null"),
        (_common(chosen=["hello"]), "`chosen[0]`: must be an object with `role` and `content`, got str"),
        (_common(chosen=[{"content": "x"}]), "`chosen[0]`: missing `role`"),
        (_common(rejected=[{"role": "assistant"}]), "`rejected[0]`: missing `content`"),
        # the prompt
        (
            _common(prompt=[_m("user", "q"), _m("bot", "x"), _m("user", "y")]),
            "`prompt[1].role`: unknown role 'bot' (expected one of system, user, assistant)",
        ),
        (_openai(input={"messages": [_m("human", "q")]}), "`input.messages[0].role`: unknown role 'human'"),
        (
            _common(prompt=[_m("user", "q"), _m("assistant", "a")]),
            "`prompt`: must end with a user turn, the last is 'assistant'",
        ),
        (
            _openai(input={"messages": [_m("system", "s")]}),
            "`input.messages`: must end with a user turn, the last is 'system'",
        ),
        (_common(prompt=[]), "`prompt`: empty list"),
        (_openai(input={"messages": []}), "`input.messages`: empty list"),
    ],
)
def test_each_problem_names_file_and_line(tmp_path, bad, needle):
    problem = _one_problem(tmp_path, bad)
    assert needle in problem, problem


def test_invalid_utf8(tmp_path):
    problem = _one_problem(tmp_path, None, raw=b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}')
    assert "invalid UTF-8 at byte" in problem


def test_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n  \n")
    parsed = read_preference_file(path)
    assert parsed.problems == [f"{path}: empty file: no examples"]
    with pytest.raises(DataError) as e:
        load_preference_file(path)
    assert e.value.problems == [f"{path}: empty file: no examples"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_preference_file(tmp_path / "nope.jsonl")


def test_every_problem_is_reported(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(
        path,
        [
            COMMON,  # 1: fine
            "{oops",  # 2: bad JSON
            _common(rejected=None),  # 3: missing rejected
            OPENAI,  # 4: fine
            _openai(preferred_output=[_m("user", "x")]),  # 5: wrong role
            {"text": "hi"},  # 6: neither format
        ],
    )
    parsed = read_preference_file(path)
    assert len(parsed.pairs) == 2
    assert [p.split(": ", 1)[0] for p in parsed.problems] == [f"{path}:{n}" for n in (2, 3, 5, 6)]
    with pytest.raises(DataError) as e:
        load_preference_file(path)
    assert e.value.problems == parsed.problems
    assert str(e.value).splitlines()[0] == f"{path}: 4 problems; nothing was trained"


def test_every_problem_of_one_row_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": 7, "chosen": "", "rejected": [_m("user", "x")]}])
    problems = read_preference_file(path).problems
    assert len(problems) == 3, problems
    assert all(p.startswith(f"{path}:1: ") for p in problems)
    assert "`prompt`" in problems[0] and "`chosen`: empty" in problems[1] and "`rejected[0].role`" in problems[2]

    path = write_jsonl(tmp_path / "q.jsonl", [{"preferred_output": [_m("assistant", "a")]}])
    assert read_preference_file(path).problems == [
        f"{path}:1: missing `input`",
        f"{path}:1: missing `non_preferred_output`",
    ]


def test_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n" + json.dumps(COMMON) + "\n\n   \n" + json.dumps(_common(chosen="")) + "\n\n" + json.dumps(OPENAI) + "\n"
    )
    parsed = read_preference_file(path)
    assert [p.where for p in parsed.pairs] == [f"{path}:2", f"{path}:7"]
    assert parsed.problems == [f"{path}:5: `chosen`: empty"]


# --- identical chosen and rejected -----------------------------------------------------------------------------


def test_identical_pairs_are_dropped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            COMMON,
            _common(rejected="hello"),  # 2: same string
            _openai(non_preferred_output=[_m("assistant", "hello")]),  # 3: same list
            _common(chosen="same", rejected=[_m("assistant", "same")]),  # 4: string vs equal list
            _common(chosen="same", rejected="same "),  # 5: differs by a space: kept
            OPENAI,
        ],
    )
    parsed = load_preference_file(path)  # identical rows are not problems: no raise
    assert parsed.problems == []
    assert parsed.identical == 3
    assert parsed.identical_lines == [2, 3, 4]
    assert [p.where for p in parsed.pairs] == [f"{path}:1", f"{path}:5", f"{path}:6"]


def test_identical_row_with_other_problems_is_a_problem_not_counted(tmp_path):
    bad = {"prompt": [_m("assistant", "x")], "chosen": "a", "rejected": "a"}
    path = write_jsonl(tmp_path / "p.jsonl", [COMMON, bad])
    parsed = read_preference_file(path)
    assert parsed.identical == 0
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith(f"{path}:2: `prompt`: must end with a user turn")


def test_only_identical_pairs_leaves_nothing_to_train(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [_common(rejected="hello"), _common(rejected="hello")])
    parsed = read_preference_file(path)
    assert parsed.identical == 2 and parsed.pairs == []
    assert parsed.problems == [f"{path}: no usable pairs: all 2 have identical chosen and rejected"]
    with pytest.raises(DataError):
        load_preference_file(path)
