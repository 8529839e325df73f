"""Reading SFT data (every problem as FILE:LINE) and marking the tokens the loss covers."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tunesmith.data.formats import Conversation, load_sft_file, read_sft_file
from tunesmith.data.templates import IGNORE, TokenizedExample, apply_length_policy, tokenize_conversations
from tunesmith.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _one_problem(tmp_path, bad_line, *, raw: bytes | None = None) -> str:
    """Write a good row, then the bad one on line 2; return the single problem reported."""
    path = tmp_path / "d.jsonl"
    if raw is not None:
        path.write_bytes(json.dumps(GOOD).encode() + b"\n" + raw + b"\n")
    else:
        write_jsonl(path, [GOOD, bad_line])
    parsed = read_sft_file(path)
    assert len(parsed.rows) == 1, parsed.problems
    assert len(parsed.problems) == 1, parsed.problems
    problem = parsed.problems[0]
    assert problem.startswith(f"{path}:2: "), problem
    return problem


def _msgs(*pairs, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"messages": [', "bad JSON"),
        ("[1, 2]", "JSON object"),
        ('"just a string"', "JSON object"),
        ({"conversation": []}, "missing `messages`"),
        ({"messages": []}, "non-empty list"),
        ({"messages": "hi"}, "non-empty list"),
        (_msgs(("robot", "x"), ("assistant", "y")), "unknown role 'robot'"),
        ({"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}, "missing `role`"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "missing `content`"),
        ({"messages": ["hi", {"role": "assistant", "content": "y"}]}, "must be an object"),
        (_msgs(("system", "s"), ("user", "u")), "no assistant turn"),
        (
            {"messages": [{"role": "user", "content": ["a", "b"]}, {"role": "assistant", "content": "y"}]},
            "content: must be a string, got list",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": None}]},
            "content: must be a string, got NoneType",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y", "weight": 0.5}]},
            "weight: must be 0 or 1",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y", "weight": 2}]},
            "weight: must be 0 or 1",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y", "weight": True}]},
            "weight: must be 0 or 1",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y", "weight": "1"}]},
            "weight: must be 0 or 1",
        ),
        (
            {"messages": [{"role": "user", "content": "u", "weight": 1}, {"role": "assistant", "content": "y"}]},
            "only assistant messages take a weight",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a", "weight": 0},
                    {"role": "user", "content": "v"},
                    {"role": "assistant", "content": "b", "weight": 0},
                ]
            },
            "every assistant turn has weight 0",
        ),
        ({"prompt": "only a prompt"}, "missing `completion`"),
        ({"completion": "only a completion"}, "missing `prompt`"),
        ({"prompt": "p", "completion": 3}, "`completion`: must be a string"),
        ({"prompt": "p", "completion": "   "}, "`completion`: empty"),
    ],
)
def test_each_problem_kind_names_file_and_line(tmp_path, bad, needle):
    problem = _one_problem(tmp_path, bad)
    assert needle in problem


def test_weight_problem_names_the_message_index(tmp_path):
    bad = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "y", "weight": 7}]}
    assert "messages[1].weight" in _one_problem(tmp_path, bad)


def test_invalid_utf8(tmp_path):
    problem = _one_problem(tmp_path, None, raw=b'{"prompt": "caf\xe9", "completion": "x"}')
    assert "invalid UTF-8" in problem and "byte 15" in problem


def test_bad_json_reports_column(tmp_path):
    problem = _one_problem(tmp_path, '{"prompt": "a", "completion": }')
    assert "bad JSON" in problem and "column" in problem


@pytest.mark.parametrize("content", [b"", b"\n\n   \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    parsed = read_sft_file(path)
    assert parsed.rows == []
    assert len(parsed.problems) == 1
    assert parsed.problems[0].startswith(f"{path}:") and "empty" in parsed.problems[0]
    with pytest.raises(DataError, match="empty"):
        load_sft_file(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_sft_file(tmp_path / "nope.jsonl")


def test_blank_lines_are_skipped_and_line_numbers_stay_right(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n" + json.dumps(GOOD) + "\n\n   \n" + "{oops\n" + "\n" + json.dumps(GOOD) + "\r\n" + '{"prompt": "p"}\n',
        encoding="utf-8",
    )
    parsed = read_sft_file(path)
    assert [r.where for r in parsed.rows] == [f"{path}:2", f"{path}:7"]
    assert [p.split(": ", 1)[0] for p in parsed.problems] == [f"{path}:5", f"{path}:8"]


def test_every_problem_is_reported_not_only_the_first(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            "not json",  # 1
            GOOD,  # 2
            [1],  # 3
            {"x": 1},  # 4
            _msgs(("user", "u")),  # 5
            GOOD,  # 6
            _msgs(("wizard", "u"), ("assistant", "a")),  # 7
            {"prompt": "p"},  # 8
        ],
    )
    parsed = read_sft_file(path)
    assert len(parsed.rows) == 2
    lines = [int(p.split(":")[1]) for p in parsed.problems]
    assert lines == [1, 3, 4, 5, 7, 8]
    with pytest.raises(DataError) as info:
        load_sft_file(path)
    err = info.value
    assert err.problems == parsed.problems
    text = str(err)
    assert "6 problems" in text
    for n in (1, 3, 4, 5, 7, 8):
        assert f"{path}:{n}: " in text


def test_valid_chat_row_with_weights_parses(tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "weight": 1},
            {"role": "user", "content": "q3"},
            {"role": "assistant", "content": "a3"},
        ],
        "id": "extra keys are ignored",
    }
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    rows = load_sft_file(path)
    assert len(rows) == 1 and isinstance(rows[0], Conversation)
    assert rows[0].where == f"{path}:1"
    assert rows[0].messages == [
        {"role": "system", "content": "Be brief.", "weight": 0},
        {"role": "user", "content": "q1", "weight": 0},
        {"role": "assistant", "content": "a1", "weight": 0},
        {"role": "user", "content": "q2", "weight": 0},
        {"role": "assistant", "content": "a2", "weight": 1},
        {"role": "user", "content": "q3", "weight": 0},
        {"role": "assistant", "content": "a3", "weight": 1},
    ]


def test_valid_prompt_completion_row_parses(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Say hi", "completion": "hi"}, GOOD])
    rows = load_sft_file(path)
    assert rows[0].messages == [
        {"role": "user", "content": "Say hi", "weight": 0},
        {"role": "assistant", "content": "hi", "weight": 1},
    ]
    assert rows[1].messages[-1] == {"role": "assistant", "content": "hello", "weight": 1}


def test_unicode_content_round_trips(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "café ☕", "completion": "日本語 😀"}])
    assert load_sft_file(path)[0].messages[1]["content"] == "日本語 😀"


# ---- masking ---------------------------------------------------------------------------------------


def _conv(messages, where="f.jsonl:1"):
    return Conversation(
        [{**m, "weight": m.get("weight", 1) if m["role"] == "assistant" else 0} for m in messages], where
    )


def _trained_text(tokenizer, ex: TokenizedExample) -> str:
    return tokenizer.decode([t for t in ex.labels if t != IGNORE])


def _trained_runs(tokenizer, ex: TokenizedExample) -> list[str]:
    """The decoded text of each maximal run of consecutive trained tokens."""
    runs, cur = [], []
    assert len(ex.input_ids) == len(ex.labels)
    for tok, label in zip(ex.input_ids, ex.labels):
        if label != IGNORE:
            assert label == tok
            cur.append(tok)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


END = "<|im_end|>\n"


def test_only_assistant_content_is_labelled(tokenizer):
    conv = _conv(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "It is 4."},
        ]
    )
    [ex] = tokenize_conversations(tokenizer, [conv])
    assert len(ex.labels) == len(ex.input_ids)
    assert ex.where == "f.jsonl:1"
    assert _trained_runs(tokenizer, ex) == ["It is 4." + END]
    assert ex.num_trained == sum(label != IGNORE for label in ex.labels)
    # and the full text is the template's rendering
    assert tokenizer.decode(ex.input_ids) == tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in conv.messages], tokenize=False
    )


def test_multi_turn_labels_each_assistant_turn(tokenizer):
    conv = _conv(
        [
            {"role": "user", "content": "alpha beta"},
            {"role": "assistant", "content": "gamma"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "délta 😀 epsilon"},
        ]
    )
    [ex] = tokenize_conversations(tokenizer, [conv])
    assert _trained_runs(tokenizer, ex) == ["gamma" + END, "délta 😀 epsilon" + END]


def test_weight_zero_turn_is_not_labelled(tokenizer):
    conv = _conv(
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "skip me", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "learn me", "weight": 1},
        ]
    )
    [ex] = tokenize_conversations(tokenizer, [conv])
    assert _trained_runs(tokenizer, ex) == ["learn me" + END]
    assert "skip me" in tokenizer.decode(ex.input_ids)


def test_train_on_prompt_labels_everything(tokenizer):
    conv = _conv([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "weight": 0}])
    [ex] = tokenize_conversations(tokenizer, [conv], train_on_prompt=True)
    assert ex.labels == ex.input_ids


def test_batched_tokenization_keeps_order(tokenizer):
    convs = [
        _conv(
            [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}], f"f.jsonl:{i + 1}"
        )
        for i in range(7)
    ]
    out = tokenize_conversations(tokenizer, convs, batch_size=3)
    assert [e.where for e in out] == [c.where for c in convs]
    assert [_trained_text(tokenizer, e) for e in out] == [f"answer {i}" + END for i in range(7)]


def test_unrenderable_conversation_is_a_data_error_with_its_line(tokenizer):
    # valid for the reader, but the template cannot render the empty prefix before the first turn
    conv = _conv([{"role": "assistant", "content": "first"}], "f.jsonl:9")
    with pytest.raises(DataError, match=r"^f\.jsonl:9: "):
        tokenize_conversations(tokenizer, [conv])


def _ex(n_prompt: int, n_answer: int, where: str = "w") -> TokenizedExample:
    ids = list(range(1, n_prompt + n_answer + 1))
    return TokenizedExample(ids, [IGNORE] * n_prompt + ids[n_prompt:], where)


def test_length_policy_truncate():
    short, long_, late = _ex(2, 2, "short"), _ex(3, 10, "long"), _ex(12, 2, "late")
    res = apply_length_policy([short, long_, late], max_length=8, overlength="truncate")
    assert [e.where for e in res.examples] == ["short", "long"]
    assert res.truncated == 1 and res.dropped_empty == 1 and res.dropped_overlength == 0
    cut = res.examples[1]
    assert cut.truncated and not res.examples[0].truncated
    assert cut.input_ids == long_.input_ids[:8] and cut.labels == long_.labels[:8]
    assert cut.num_trained == 5


def test_length_policy_drop():
    exs = [_ex(2, 2, "a"), _ex(3, 10, "b"), _ex(4, 4, "c"), _ex(12, 2, "d")]
    res = apply_length_policy(exs, max_length=8, overlength="drop")
    assert [e.where for e in res.examples] == ["a", "c"]  # exactly max_length is kept
    assert res.dropped_overlength == 2 and res.truncated == 0 and res.dropped_empty == 0


def test_length_policy_on_real_tokens(tokenizer):
    conv = _conv([{"role": "user", "content": "alpha " * 20}, {"role": "assistant", "content": "beta " * 20}])
    [ex] = tokenize_conversations(tokenizer, [conv])
    res = apply_length_policy([ex], max_length=len(ex.input_ids) - 5, overlength="truncate")
    assert res.truncated == 1 and len(res.examples[0].input_ids) == len(ex.input_ids) - 5
    res = apply_length_policy([ex], max_length=len(ex.input_ids), overlength="drop")
    assert res.examples == [ex] and res.dropped_overlength == 0
