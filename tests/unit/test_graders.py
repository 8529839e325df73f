"""Tests for tunesmith.rollout.graders: OpenAI grader objects as rewards, each type against hand arithmetic
(or the library's own number), templates, multi's expression, the python grader's process, bad graders."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.rollout.graders import build_grader, load_grader_file
from tunesmith.rollout.python_grader import GraderError
from tunesmith.rollout.rewards import NamedReward, RewardError, parse_reward_specs, score_completions

PROMPT = [{"role": "user", "content": "Where did the cat sit?"}]


def check(operation: str, input: str = "{{ sample.output_text }}", reference: str = "{{ item.answer }}") -> dict:
    return {"type": "string_check", "name": "check", "input": input, "reference": reference, "operation": operation}


def similar(metric: str) -> dict:
    return {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": metric,
    }


def grade(grader: dict, completion: str, row: dict | None = None, **kwargs) -> float:
    return build_grader(grader, **kwargs)(PROMPT, completion, row or {})


# ---------------------------------------------------------------- string_check


@pytest.mark.parametrize(
    "operation, completion, answer, expected",
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris ", "Paris", 0.0),  # no stripping: eq is exact
        ("eq", "paris", "Paris", 0.0),
        ("ne", "paris", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "It is Paris.", "Paris", 1.0),
        ("like", "It is paris.", "Paris", 0.0),  # like is case-sensitive
        ("ilike", "It is PARIS.", "paris", 1.0),
        ("ilike", "It is Lyon.", "paris", 0.0),
    ],
)
def test_string_check_operations(operation, completion, answer, expected):
    assert grade(check(operation), completion, {"answer": answer}) == expected


# ---------------------------------------------------------------- templates


def test_templates_read_the_sample_its_json_and_nested_item_fields():
    grader = check(
        "eq",
        input="{{sample.output_json.city}}/{{ sample.output_json.rank }}/{{ item.meta.tags[1] }}/{{item.meta.tags.0}}",
        reference="{{ item.expected.city }}/2/b/a",
    )
    row = {"expected": {"city": "Paris"}, "meta": {"tags": ["a", "b"]}}
    assert grade(grader, '{"city": "Paris", "rank": 2}', row) == 1.0
    assert grade(grader, '{"city": "Lyon", "rank": 2}', row) == 0.0


def test_non_string_values_are_substituted_as_json():
    row = {"answer": {"a": [1, True, None]}}
    assert grade(check("eq", reference="{{ item.answer }}"), '{"a": [1, true, null]}', row) == 1.0
    assert grade(check("eq", reference="{{ item.n }}"), "3", {"n": 3}) == 1.0


def test_a_completion_that_is_not_json_renders_its_fields_empty():
    grader = check("eq", input="[{{ sample.output_json.city }}]", reference="[]")
    assert grade(grader, "Paris, I think", {}) == 1.0  # not JSON: "", scored, not an error
    assert grade(grader, '{"town": "Paris"}', {}) == 1.0  # JSON without the field: ""
    assert grade(grader, '{"city": "Paris"}', {}) == 0.0


def reward_from(grader: dict, directory: Path) -> NamedReward:
    path = directory / "grader.json"
    path.write_text(json.dumps(grader))
    (reward,) = parse_reward_specs(f"grader:{path}")
    return reward


def test_item_fields_are_required_of_every_row_and_a_missing_nested_one_names_itself(tmp_path):
    reward = reward_from(check("eq", reference="{{ item.expected.city }} {{ item.answer }}"), tmp_path)
    assert reward.required_fields == {"expected", "answer"}
    with pytest.raises(DataError, match=r"data.jsonl:2: missing `answer` \(needed by reward 'grader:"):
        score_completions([reward], [PROMPT], ["x"], [{"expected": {}}], where=["data.jsonl:2"])
    with pytest.raises(RewardError, match=r"data.jsonl:3: .*\{\{ item.expected.city \}\}: the row has no such field"):
        score_completions([reward], [PROMPT], ["x"], [{"expected": {}, "answer": "a"}], where=["data.jsonl:3"])


@pytest.mark.parametrize(
    "text, why",
    [
        ("{{ user.name }}", r"grader.input: '\{\{ user.name \}\}' is not a variable"),
        ("{{ sample.text }}", r"grader.input: '\{\{ sample.text \}\}': the sample has output_text and output_json"),
        ("{{ sample.output_text.x }}", "the sample has output_text and output_json"),
        ("{{ item.a b }}", "is not a variable"),
    ],
)
def test_bad_template_variables_are_refused_when_built(text, why):
    with pytest.raises(ConfigError, match=why):
        build_grader(check("eq", input=text))


# ---------------------------------------------------------------- text_similarity

REFERENCE = "the cat sat on the mat"


def test_fuzzy_match_is_the_normalised_indel_similarity():
    # kitten -> sitting: the longest common subsequence "ittn" has 4 characters, so 6 + 7 - 2*4 = 5 edits
    assert grade(similar("fuzzy_match"), "kitten", {"answer": "sitting"}) == pytest.approx(1 - 5 / 13)
    assert grade(similar("fuzzy_match"), "same", {"answer": "same"}) == 1.0


def test_bleu_by_hand():
    # "the cat sat on a mat" against REFERENCE: clipped precisions 5/6, 3/5, 2/4, 1/3; equal lengths, BP = 1
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert grade(similar("bleu"), "the cat sat on a mat", {"answer": REFERENCE}) == pytest.approx(expected)
    # "the cat": p1 = p2 = 1, no 3- or 4-grams: smoothed to 1/2 and 1/4; BP = exp(1 - 6/2)
    short = math.exp(1 - 6 / 2) * (1 * 1 * (1 / 2) * (1 / 4)) ** (1 / 4)
    assert grade(similar("bleu"), "the cat", {"answer": REFERENCE}) == pytest.approx(short)
    assert grade(similar("bleu"), REFERENCE, {"answer": REFERENCE}) == pytest.approx(1.0)


def test_gleu_by_hand():
    # n-grams of orders 1-4: 6 + 5 + 4 + 3 = 18 on each side; shared 5 + 3 + 2 + 1 = 11
    assert grade(similar("gleu"), "the cat sat on a mat", {"answer": REFERENCE}) == pytest.approx(11 / 18)


@pytest.mark.parametrize(
    "metric, expected",
    [
        ("rouge_1", 5 / 6),  # shared words (the x1, cat, sat, on, mat) over 6 on each side: P = R = F = 5/6
        ("rouge_2", 3 / 5),  # shared bigrams: the cat, cat sat, sat on
        ("rouge_3", 2 / 4),
        ("rouge_4", 1 / 3),
        ("rouge_5", 0.0),  # the only 5-grams differ
        ("rouge_l", 5 / 6),  # LCS "the cat sat on mat"
    ],
)
def test_rouge_by_hand(metric, expected):
    assert grade(similar(metric), "The cat sat on a mat.", {"answer": REFERENCE}) == pytest.approx(expected)


def test_rouge_reads_words_in_any_script():
    # rouge-score's default tokenizer keeps only a-z0-9: these would score 0
    assert grade(similar("rouge_1"), "кошка сидит", {"answer": "кошка спит"}) == pytest.approx(0.5)


def test_rouge_f1_with_unequal_lengths():
    # input "cat sat" (2 words) against REFERENCE (6): 2 shared, P = 1, R = 1/3, F = 2PR/(P+R) = 1/2
    assert grade(similar("rouge_1"), "cat sat", {"answer": REFERENCE}) == pytest.approx(0.5)


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_l"])
def test_empty_texts(metric):
    assert grade(similar(metric), "", {"answer": ""}) == 1.0
    assert grade(similar(metric), "", {"answer": "x"}) == 0.0
    assert grade(similar(metric), "x", {"answer": "  "}) == 0.0


def test_meteor_needs_wordnet():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        with pytest.raises(ConfigError, match="grader.evaluation_metric: meteor needs NLTK's WordNet data"):
            build_grader(similar("meteor"))
    else:
        assert grade(similar("meteor"), REFERENCE, {"answer": REFERENCE}) > 0.9


def test_cosine_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="grader.evaluation_metric: cosine compares embeddings"):
        build_grader(similar("cosine"))


# ---------------------------------------------------------------- python


def python(source: str, name: str = "py") -> dict:
    return {"type": "python", "name": name, "source": source}


def test_python_grader_runs_in_another_process_and_sees_sample_and_item():
    source = (
        "import os\n"
        "def grade(sample, item):\n"
        "    print('chatter on stdout must not break anything')\n"
        "    return os.getpid() + len(sample['output_text']) / 100 + item['bonus'] + (sample['output_json'] or 0)\n"
    )
    grader = build_grader(python(source))
    first = grader(PROMPT, "abcd", {"bonus": 0})
    pid = int(first)
    assert pid != os.getpid() and first - pid == pytest.approx(0.04)
    assert grader(PROMPT, "7", {"bonus": 0.5}) == pytest.approx(pid + 0.01 + 0.5 + 7)  # the same process
    grader.close()


def test_python_grader_keeps_one_process_for_many_calls():
    grader = build_grader(python("import os\ndef grade(sample, item):\n    return os.getpid()\n"))
    start = time.monotonic()
    pids = {grader(PROMPT, str(i), {}) for i in range(200)}
    assert len(pids) == 1 and time.monotonic() - start < 10  # not an interpreter start per completion
    grader.close()


def test_python_grader_timeout_is_a_clear_error_and_the_next_call_starts_afresh():
    source = "def grade(sample, item):\n    while sample['output_text'] == 'loop':\n        pass\n    return 1\n"
    grader = build_grader(python(source, "spin"), python_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(GraderError, match=r"python grader 'spin': grade\(\) did not finish within 0.5 s"):
        grader(PROMPT, "loop", {})
    assert time.monotonic() - start < 5
    assert grader(PROMPT, "fine", {}) == 1.0
    grader.close()


def test_python_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNESMITH_GRADER_TIMEOUT_S", "0.3")
    grader = build_grader(python("import time\ndef grade(s, i):\n    time.sleep(5)\n"))
    with pytest.raises(GraderError, match="within 0.3 s"):
        grader(PROMPT, "x", {})
    monkeypatch.setenv("TUNESMITH_GRADER_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="TUNESMITH_GRADER_TIMEOUT_S='soon'"):
        build_grader(python("def grade(s, i):\n    return 1\n"))


def test_python_grader_exception_names_the_grader_the_row_and_the_line(tmp_path):
    reward = reward_from(python("def grade(sample, item):\n    x = 1\n    return x / 0\n", "divider"), tmp_path)
    path = tmp_path / "grader.json"
    with pytest.raises(RewardError) as e:
        score_completions([reward], [PROMPT], ["x"], [{}], where=["prompts.jsonl:4"])
    message = str(e.value)
    assert message.startswith(f"prompts.jsonl:4: reward 'grader:{path}' raised GraderError: python grader 'divider'")
    assert "ZeroDivisionError: division by zero (source line 3: return x / 0)" in message


@pytest.mark.parametrize(
    "returned, shown",
    [("'high'", "'high' (str)"), ("None", "None (NoneType)"), ("float('nan')", "nan (float)")],
)
def test_python_grader_must_return_a_finite_number(returned, shown):
    grader = build_grader(python(f"def grade(sample, item):\n    return {returned}\n", "bad"))
    with pytest.raises(GraderError, match=rf"python grader 'bad': grade\(\) returned {re.escape(shown)}; it must"):
        grader(PROMPT, "x", {})


def test_python_grader_source_that_fails_when_run_or_exits():
    failing = build_grader(python("import no_such_module_here\ndef grade(s, i):\n    return 1\n", "imports"))
    with pytest.raises(GraderError, match="python grader 'imports': running the source raised ModuleNotFoundError"):
        failing(PROMPT, "x", {})
    exits = build_grader(python("import os\ndef grade(s, i):\n    os._exit(3)\n", "quits"))
    with pytest.raises(GraderError, match=r"python grader 'quits': its process exited \(code 3\)"):
        exits(PROMPT, "x", {})


def test_python_grader_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("TUNESMITH_API_KEYS", "alice:sk-secret")
    grader = build_grader(
        python("import os\ndef grade(s, i):\n    return len([k for k in os.environ if 'API' in k])\n")
    )
    assert grader(PROMPT, "x", {}) == 0.0
    grader.close()


@pytest.mark.parametrize(
    "source, why",
    [
        ("def grade(sample, item)\n    return 1\n", r"grader.source: line 1: "),
        ("def score(sample, item):\n    return 1\n", "grader.source: defines no function grade"),
        ("def grade(sample):\n    return 1\n", r"grade must take two arguments, \(sample, item\)"),
        ("def grade(a, b, c):\n    return 1\n", "grade must take two arguments"),
        ("async def grade(a, b):\n    return 1\n", "not async def"),
    ],
)
def test_python_source_is_checked_without_running_it(source, why):
    with pytest.raises(ConfigError, match=why):
        build_grader(python(source))


def test_python_grade_may_be_bound_otherwise():
    assert grade(python("grade = lambda sample, item: 2\n"), "x") == 2.0
    assert grade(python("def grade(sample, item, scale=3):\n    return scale\n"), "x") == 3.0


# ---------------------------------------------------------------- multi


def test_multi_combines_named_graders_with_arithmetic():
    grader = {
        "type": "multi",
        "name": "combined",
        "graders": {
            "exact": check("eq"),
            "close": check("ilike"),
            "py": python("def grade(sample, item):\n    return len(sample['output_text'])\n"),
        },
        "calculate_output": "0.5 * exact + 0.25 * close + max(0, min(1, py / 10)) - abs(-0.125) * (2 - 1)",
    }
    # "PARIS": exact 0, close 1, py 5 -> 0 + 0.25 + 0.5 - 0.125
    assert grade(grader, "PARIS", {"answer": "Paris"}) == pytest.approx(0.625)
    # "Paris": exact 1, close 1, py 5 -> 0.5 + 0.25 + 0.5 - 0.125
    assert grade(grader, "Paris", {"answer": "Paris"}) == pytest.approx(1.125)


@pytest.mark.parametrize(
    "formula, expected",
    [
        ("a ** 2 + sqrt(b)", 4 + 3),
        ("-a + +b", -2 + 9),
        ("floor(b / a) + ceil(0.5) + exp(0) + log(1)", 4 + 1 + 1 + 0),
        ("(a + b) / (a - 1)", 11),
    ],
)
def test_multi_expression_functions(formula, expected):
    two = python("def grade(s, i):\n    return 2\n")
    nine = python("def grade(s, i):\n    return 9\n")
    multi = {"type": "multi", "graders": {"a": two, "b": nine}, "calculate_output": formula}
    assert grade(multi, "x") == pytest.approx(expected)


def test_multi_runs_only_the_graders_it_uses_and_requires_only_their_fields():
    never = python("def grade(s, i):\n    raise RuntimeError('must not run')\n")
    multi = {"type": "multi", "graders": {"a": check("eq"), "unused": never}, "calculate_output": "a"}
    built = build_grader(multi)
    assert built(PROMPT, "Paris", {"answer": "Paris"}) == 1.0
    assert built.required_fields == {"answer"}


def test_multi_arithmetic_errors_name_the_grader():
    zero = {"type": "multi", "name": "ratio", "graders": {"a": check("eq")}, "calculate_output": "1 / a"}
    with pytest.raises(GraderError, match="multi grader 'ratio': calculate_output failed: ZeroDivisionError"):
        grade(zero, "no", {"answer": "yes"})


def test_multi_accepts_one_grader_object_as_the_sdk_types_describe_it():
    multi = {"type": "multi", "graders": check("eq"), "calculate_output": "2 * check"}
    assert grade(multi, "yes", {"answer": "yes"}) == 2.0


@pytest.mark.parametrize(
    "formula, why",
    [
        ("__import__('os').system('true')", r"grader.calculate_output: .* is not allowed"),
        ("a.real", "is not allowed"),
        ("a if a else 1", "is not allowed"),
        ("[a][0]", "is not allowed"),
        ("a < 1", "is not allowed"),
        ("'a'", "is not allowed"),
        ("True + a", "is not allowed"),
        ("c + a", r"grader.calculate_output: 'c' is not one of the graders \(a\)"),
        ("max(a)", r"max\(\) takes 2 or more numbers"),
        ("abs(a, a)", r"abs\(\) takes 1 numbers"),
        ("a +", "is not an expression"),
    ],
)
def test_multi_expression_refuses_anything_but_arithmetic(formula, why):
    with pytest.raises(ConfigError, match=why):
        build_grader({"type": "multi", "graders": {"a": check("eq")}, "calculate_output": formula})


# ---------------------------------------------------------------- score_model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_dir):
    """A `tunesmith reward` output on the tiny model, by hand: the full base and a head of our choosing."""
    import torch

    from tunesmith.models.reward import new_reward_head, save_reward_head

    out = tmp_path_factory.mktemp("rm") / "reward_model"
    out.mkdir()
    (out / "model").symlink_to(tiny_dir, target_is_directory=True)
    hidden = json.loads((tiny_dir / "config.json").read_text())["hidden_size"]
    head = new_reward_head(hidden, torch.device("cpu"))
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, hidden).unsqueeze(0))
        head.bias.fill_(0.25)
    save_reward_head(out, head, tiny_dir, "full")
    return out


def test_score_model_scores_prompt_and_completion_with_the_reward_model(reward_model_dir):
    from tunesmith.data.formats import Conversation
    from tunesmith.data.templates import tokenize_conversations
    from tunesmith.eval.reward import score_examples
    from tunesmith.models.reward import load_reward_model

    model, head, tokenizer = load_reward_model(reward_model_dir)

    def expected(prompt: list[dict], completion: str) -> float:
        messages = [{**m, "weight": 0} for m in prompt] + [{"role": "assistant", "content": completion, "weight": 1}]
        (example,) = tokenize_conversations(tokenizer, [Conversation(messages, "t")])
        return score_examples(model, head, [example], tokenizer.pad_token_id)[0]

    grader = build_grader({"type": "score_model", "name": "rm", "model": str(reward_model_dir.parent), "input": []})
    other = [{"role": "user", "content": "Something else entirely"}]
    a, b, c = grader(PROMPT, "on the mat", {}), grader(PROMPT, "in the hat", {}), grader(other, "on the mat", {})
    assert a == pytest.approx(expected(PROMPT, "on the mat"), abs=1e-5)
    assert c == pytest.approx(expected(other, "on the mat"), abs=1e-5)
    assert len({round(a, 6), round(b, 6), round(c, 6)}) == 3  # the completion and the prompt both count

    lo, hi = sorted([a, b])
    clamped = build_grader({"type": "score_model", "model": str(reward_model_dir), "range": [lo, (lo + hi) / 2]})
    assert clamped(PROMPT, "on the mat", {}) == pytest.approx(min(a, (lo + hi) / 2))
    assert clamped(PROMPT, "in the hat", {}) == pytest.approx(min(b, (lo + hi) / 2))


@pytest.mark.parametrize(
    "extra, why",
    [
        ({"model": "/no/such/model"}, "grader.model: /no/such/model: not a reward model"),
        ({"range": [1]}, r"grader.range: must be two numbers \[lo, hi\], got \[1\]"),
        ({"range": [1, 0]}, "grader.range: lo must be below hi"),
        ({"range": "0,1"}, "grader.range: must be an array, got a string"),
    ],
)
def test_score_model_bad_fields(reward_model_dir, extra, why):
    with pytest.raises(ConfigError, match=why):
        build_grader({"type": "score_model", "model": str(reward_model_dir), **extra})


# ---------------------------------------------------------------- bad graders and the grader:PATH reward


@pytest.mark.parametrize(
    "grader, why",
    [
        ("eq", "grader: a grader must be an object, got a string"),
        ({"name": "x"}, "grader.type: missing; one of string_check, text_similarity, python, score_model, multi"),
        ({"type": "regex"}, "grader.type: 'regex' is not one of string_check, text_similarity"),
        ({"type": "label_model"}, "grader.type: label_model is an LLM judge"),
        ({**check("eq"), "operation": "foo"}, "grader.operation: 'foo' is not one of eq, ne, like, ilike"),
        ({**check("eq"), "operaton": "eq"}, r"grader.operaton: unknown field for a string_check grader \(did you mean"),
        ({k: v for k, v in check("eq").items() if k != "reference"}, "grader.reference: missing"),
        ({**check("eq"), "input": 3}, "grader.input: must be a string, got a number"),
        ({**similar("bleu"), "evaluation_metric": "blue"}, "grader.evaluation_metric: 'blue' is not one of"),
        (
            {"type": "multi", "graders": {"a": {**check("eq"), "operation": "foo"}}, "calculate_output": "a"},
            r"^grader.graders.a.operation: 'foo' is not one of eq, ne, like, ilike$",
        ),
        (
            {"type": "multi", "graders": {"a": python("x = 1")}, "calculate_output": "a"},
            "grader.graders.a.source: defines no function grade",
        ),
        (
            {"type": "multi", "graders": {"my-grader": check("eq")}, "calculate_output": "1"},
            "grader.graders.my-grader: a grader's key must be a name",
        ),
        (
            {"type": "multi", "graders": {"m": {"type": "multi"}}, "calculate_output": "m"},
            "grader.graders.m.type: a multi grader cannot hold another multi",
        ),
        ({"type": "multi", "graders": {}, "calculate_output": "1"}, "grader.graders: empty"),
        ({"type": "multi", "graders": [], "calculate_output": "1"}, "grader.graders: must be an object"),
    ],
)
def test_bad_graders_are_config_errors_naming_the_field(grader, why):
    with pytest.raises(ConfigError, match=why):
        build_grader(grader)


def test_fields_openai_has_and_tunesmith_does_not_use_are_accepted():
    assert grade({**python("def grade(s, i):\n    return 1\n"), "image_tag": "2025-05-08"}, "x") == 1.0
    assert grade({**similar("fuzzy_match"), "pass_threshold": 0.5}, "a", {"answer": "a"}) == 1.0
    assert grade({k: v for k, v in check("eq").items() if k != "name"}, "a", {"answer": "a"}) == 1.0  # name optional


def test_grader_reward_from_a_file(tmp_path):
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(check("eq")))
    (reward,) = parse_reward_specs(f"length_penalty:5,grader:{path}")[1:]
    assert reward.name == f"grader:{path}" and reward.required_fields == {"answer"}
    totals, parts = score_completions([reward], [PROMPT] * 2, ["Paris", "Lyon"], [{"answer": "Paris"}] * 2)
    assert totals == [1.0, 0.0] and parts == {f"grader:{path}": [1.0, 0.0]}


@pytest.mark.parametrize(
    "text, why",
    [
        (None, "cannot read the grader"),
        ("{not json", "the grader is not valid JSON"),
        (json.dumps({**check("eq"), "operation": "is"}), r"grader.json: grader.operation: 'is' is not one of"),
    ],
)
def test_grader_file_problems_name_the_file(tmp_path, text, why):
    path = tmp_path / "grader.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=why) as e:
        load_grader_file(path)
    assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match=why):
        parse_reward_specs(f"grader:{path}")


def test_grader_spec_needs_a_path():
    with pytest.raises(ConfigError, match=r"'grader' needs an argument: grader:PATH"):
        parse_reward_specs("grader")
