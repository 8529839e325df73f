"""Reading KTO unpaired data (prompt/completion/label and messages/label JSONL), every problem as FILE:LINE."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tunesmith.data.unpaired import ParsedUnpairedFile, UnpairedExample, load_unpaired_file, read_unpaired_file
from tunesmith.errors import DataError


def _m(role, content):
    return {"role": role, "content": content}


COMMON = {"prompt": "hi", "completion": "hello", "label": True}
CHAT = {"messages": [_m("system", "Be brief."), _m("user", "hi"), _m("assistant", "go away")], "label": False}


def _with(row, **changes):
    row = json.loads(json.dumps(row))
    for key, value in changes.items():
        if value is None:
            row.pop(key)
        else:
            row[key] = value
    return row


def _one_problem(tmp_path, bad) -> str:
    """Write a good row, then the bad one on line 2; return the single problem reported."""
    path = write_jsonl(tmp_path / "k.jsonl", [COMMON, bad])
    parsed = read_unpaired_file(path)
    assert len(parsed.examples) == 1, parsed.problems
    assert len(parsed.problems) == 1, parsed.problems
    problem = parsed.problems[0]
    assert problem.startswith(f"{path}:2: "), problem
    return problem


# --- formats that parse ----------------------------------------------------------------------------------------


def test_common_format_strings(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [COMMON, _with(COMMON, completion="go away", label=False)])
    parsed = load_unpaired_file(path)
    assert isinstance(parsed, ParsedUnpairedFile)
    assert parsed.examples == [
        UnpairedExample([_m("user", "hi")], [_m("assistant", "hello")], True, f"{path}:1"),
        UnpairedExample([_m("user", "hi")], [_m("assistant", "go away")], False, f"{path}:2"),
    ]
    assert (parsed.desirable, parsed.undesirable, parsed.warnings) == (1, 1, [])


def test_common_format_lists(tmp_path):
    row = {
        "prompt": [_m("system", "s"), _m("user", "q")],
        "completion": [_m("assistant", "a"), _m("assistant", "b")],
        "label": False,
    }
    example = load_unpaired_file(write_jsonl(tmp_path / "k.jsonl", [row, COMMON])).examples[0]
    assert example.prompt == [_m("system", "s"), _m("user", "q")]
    assert example.completion == [_m("assistant", "a"), _m("assistant", "b")]
    assert example.desirable is False


def test_chat_format_splits_at_the_last_user_turn(tmp_path):
    row = {
        "messages": [
            _m("user", "a"),
            _m("assistant", "b"),
            {"role": "user", "content": "c", "name": "x"},
            _m("assistant", "d"),
            _m("assistant", "e"),
        ],
        "label": True,
    }
    path = write_jsonl(tmp_path / "k.jsonl", [row, CHAT])
    parsed = load_unpaired_file(path)
    assert parsed.examples[0] == UnpairedExample(
        prompt=[_m("user", "a"), _m("assistant", "b"), _m("user", "c")],  # only role and content kept
        completion=[_m("assistant", "d"), _m("assistant", "e")],
        desirable=True,
        where=f"{path}:1",
    )
    assert parsed.examples[1] == UnpairedExample(
        [_m("system", "Be brief."), _m("user", "hi")], [_m("assistant", "go away")], False, f"{path}:2"
    )
    assert (parsed.desirable, parsed.undesirable) == (1, 1)


@pytest.mark.parametrize(
    "label, present, missing", [(True, "desirable", "undesirable"), (False, "undesirable", "desirable")]
)
def test_one_class_missing_is_a_warning_not_an_error(tmp_path, label, present, missing):
    path = write_jsonl(tmp_path / "k.jsonl", [_with(COMMON, label=label), _with(CHAT, label=label)])
    parsed = load_unpaired_file(path)  # no raise
    assert len(parsed.examples) == 2 and parsed.problems == []
    assert (parsed.desirable, parsed.undesirable) == ((2, 0) if label else (0, 2))
    assert len(parsed.warnings) == 1
    assert parsed.warnings[0].startswith(
        f"{path}: all 2 examples are {present} (label {str(label).lower()}), none {missing}"
    )


# --- every kind of problem -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"prompt": ', "bad JSON"),
        ([1, 2], "each line must be a JSON object, got list"),
        ({"prompt": "a", "chosen": "b", "rejected": "c", "label": True}, "missing `completion`"),
        (
            {"chosen": "b", "rejected": "c", "label": True},
            "not an unpaired row: expected `prompt`, `completion` and `label`, or `messages` and `label`; "
            "found keys: `chosen`, `rejected`, `label`",
        ),
        (_with(CHAT, prompt="x"), "mixes keys of two formats (`messages`, `prompt`)"),
        # the label
        (_with(COMMON, label=None), "missing `label` (true for a desirable completion, false for an undesirable one)"),
        (_with(CHAT, label=None), "missing `label`"),
        (_with(COMMON, label=1), "`label`: must be true or false, got 1"),
        (_with(COMMON, label="true"), '`label`: must be true or false, got "true"'),
        ({**COMMON, "label": None}, "`label`: must be true or false, got null"),
        # prompt/completion
        (_with(COMMON, prompt=None), "missing `prompt`"),
        (_with(COMMON, completion=None), "missing `completion`"),
        (_with(COMMON, completion=""), "`completion`: empty"),
        (_with(COMMON, completion=[]), "`completion`: empty list"),
        (_with(COMMON, completion=[_m("assistant", " ")]), "`completion[0].content`: empty"),
        (
            _with(COMMON, completion=[_m("user", "x")]),
            "`completion[0].role`: must be 'assistant', got 'user' (the prompt belongs in `prompt`)",
        ),
        (_with(COMMON, completion=3), "`completion`: must be a string or a list of assistant messages, got int"),
        (
            _with(COMMON, prompt=[_m("user", "q"), _m("assistant", "a")]),
            "`prompt`: must end with a user turn, the last is 'assistant'",
        ),
        (
            _with(COMMON, prompt=[_m("bot", "q")]),
            "`prompt[0].role`: unknown role 'bot' (expected one of system, user, ",
        ),
        (_with(COMMON, prompt=[]), "`prompt`: empty list"),
        (_with(COMMON, prompt=[{"content": "x"}]), "`prompt[0]`: missing `role`"),
        # messages
        (_with(CHAT, messages="hi"), "`messages`: must be a list of messages, got str"),
        (_with(CHAT, messages=[]), "`messages`: empty list"),
        (_with(CHAT, messages=[_m("system", "s"), _m("assistant", "a")]), "`messages`: no user turn"),
        (
            _with(CHAT, messages=[_m("assistant", "a"), _m("user", "q")]),
            "`messages`: no assistant turn after the last user turn",
        ),
        (
            _with(CHAT, messages=[_m("user", "q"), _m("assistant", "a"), _m("system", "s")]),
            "`messages[2].role`: must be 'assistant' after the last user turn, got 'system'",
        ),
        (
            _with(CHAT, messages=[_m("user", "q"), _m("assistant", "a"), _m("assistant", "\n")]),
            "`messages[2].content`: empty",
        ),
        (_with(CHAT, messages=[_m("user", "q"), _m("human", "a")]), "`messages[1].role`: unknown role 'human'"),
        (
            _with(CHAT, messages=[_m("user", "q"), "a"]),
            "`messages[1]`: must be an object with `role` and `content`, got str",
        ),
        (_with(CHAT, messages=[_m("user", "q"), {"role": "assistant"}]), "`messages[1]`: missing `content`"),
        (
            _with(CHAT, messages=[_m("user", 5), _m("assistant", "a")]),
            "`messages[0].content`: must be a string, got int",
        ),
    ],
)
def test_each_problem_names_file_and_line(tmp_path, bad, needle):
    if isinstance(bad, str):
        path = tmp_path / "k.jsonl"
        path.write_text(json.dumps(COMMON) + "\n" + bad + "\n")
        problems = read_unpaired_file(path).problems
        assert len(problems) == 1 and problems[0].startswith(f"{path}:2: ") and needle in problems[0], problems
        return
    problem = _one_problem(tmp_path, bad)
    assert needle in problem, problem


def test_every_problem_of_one_row_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": 7, "completion": "", "label": "yes"}])
    assert read_unpaired_file(path).problems == [
        f"{path}:1: `prompt`: must be a string or a list of messages, got int",
        f"{path}:1: `completion`: empty",
        f'{path}:1: `label`: must be true or false, got "yes"',
    ]
    path = write_jsonl(tmp_path / "q.jsonl", [{"messages": [_m("user", "q")]}])
    assert read_unpaired_file(path).problems == [
        f"{path}:1: `messages`: no assistant turn after the last user turn: nothing to label",
        f"{path}:1: missing `label` (true for a desirable completion, false for an undesirable one)",
    ]


def test_good_and_bad_rows_mixed(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(COMMON),  # 1: fine
                "{oops",  # 2: bad JSON
                json.dumps(_with(COMMON, label=None)),  # 3: missing label
                "",  # 4: blank: skipped, numbering kept
                json.dumps(CHAT),  # 5: fine
                json.dumps(_with(CHAT, messages=[_m("user", "q")])),  # 6: no completion
                json.dumps({"text": "hi"}),  # 7: neither format
                json.dumps(_with(COMMON, label=False)),  # 8: fine
            ]
        )
        + "\n"
    )
    parsed = read_unpaired_file(path)
    assert [e.where for e in parsed.examples] == [f"{path}:{n}" for n in (1, 5, 8)]
    assert (parsed.desirable, parsed.undesirable) == (1, 2)
    assert [p.split(": ", 1)[0] for p in parsed.problems] == [f"{path}:{n}" for n in (2, 3, 6, 7)]
    with pytest.raises(DataError) as e:
        load_unpaired_file(path)
    assert e.value.problems == parsed.problems
    assert str(e.value).splitlines()[0] == f"{path}: 4 problems; nothing was trained"


def test_empty_and_missing_files(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text("\n  \n")
    parsed = read_unpaired_file(path)
    assert parsed.problems == [f"{path}: empty file: no examples"] and parsed.warnings == []
    with pytest.raises(DataError):
        load_unpaired_file(path)
    with pytest.raises(DataError, match="no such file"):
        read_unpaired_file(tmp_path / "nope.jsonl")
