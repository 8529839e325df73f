"""The reinforcement method through the openai SDK: OpenAI grader objects become the reward of a grpo run
(string_check, and multi over string_check + python), a bad grader is a 400 on `method`, a malformed RFT
file fails the job with FILE:LINE problems."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tests.service.conftest import Server, tiny_job, upload, wait_for

openai = pytest.importorskip("openai")

# small runs: 2 steps of 3 prompts x 2 samples x 8 tokens
SMALL = {"max_steps": 2, "save_every": 1, "group_size": 2, "max_new_tokens": 8}
CHECK = {
    "type": "string_check",
    "name": "answer",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference_answer }}",
    "operation": "ilike",
}
LENGTH = {
    "type": "python",
    "name": "length",
    "source": "import os\n\ndef grade(sample, item):\n    return min(len(sample['output_text']), 100) / 100\n",
}


def rft_rows(n: int) -> list[dict]:
    """OpenAI's RFT rows: messages ending with a user turn, and the fields the grader reads."""
    words = ["alpha", "beta", "gamma"]
    return [
        {"messages": [{"role": "user", "content": f"Say {words[i % 3]}"}], "reference_answer": words[i % 3]}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def rft_files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("rft")
    bad = [rft_rows(1)[0], {"messages": [{"role": "assistant", "content": "no user turn"}]}, {"prompt": 3}]
    return {
        "train": write_jsonl(d / "train.jsonl", rft_rows(6)),
        "valid": write_jsonl(d / "valid.jsonl", rft_rows(2)),
        "bad": write_jsonl(d / "bad.jsonl", bad),
        "unanswered": write_jsonl(d / "unanswered.jsonl", [{"messages": rft_rows(1)[0]["messages"]}] * 2),
    }


def rft_job(client, training_file: str, grader: dict, **kwargs):
    method = {"type": "reinforcement", "reinforcement": {"grader": grader, **kwargs.pop("reinforcement", {})}}
    return tiny_job(client, training_file, method=method, tunesmith={**SMALL, **kwargs.pop("tunesmith", {})}, **kwargs)


def test_string_check_and_multi_jobs_train_on_their_graders(server, rft_files):
    client = server.client()
    train, valid = upload(client, rft_files["train"]), upload(client, rft_files["valid"])
    multi = {
        "type": "multi",
        "name": "blend",
        "graders": {"answer": CHECK, "length": LENGTH},
        "calculate_output": "0.5 * answer + 0.5 * length",
    }
    check_job = rft_job(
        client,
        train,
        CHECK,
        validation_file=valid,
        seed=2**31 - 1,  # the largest seed the service draws: the sampling seeds derived from it fit torch's
        reinforcement={"hyperparameters": {"n_epochs": 1, "compute_multiplier": 1.5, "reasoning_effort": "low"}},
    )
    multi_job = rft_job(client, train, multi)
    assert check_job.method.type == "reinforcement" and check_job.status == "validating_files"

    done = wait_for(client, check_job.id, {"succeeded"})
    raw = server.http("GET", f"/fine_tuning/jobs/{check_job.id}").json()
    assert raw["method"]["type"] == "reinforcement" and raw["method"]["reinforcement"]["grader"] == CHECK
    hyper = raw["method"]["reinforcement"]["hyperparameters"]
    assert hyper == {
        "n_epochs": 1,
        "batch_size": 6,  # auto: min(8, rows)
        "learning_rate_multiplier": 1.0,
        "compute_multiplier": 1.5,
        "eval_interval": 0,
        "eval_samples": 1,
        "reasoning_effort": "low",
    }
    assert done.hyperparameters.batch_size == 6
    grader_file = server.home / "graders" / f"{check_job.id}.json"
    assert json.loads(grader_file.read_text()) == CHECK
    config = (server.home / "runs" / check_job.id / "config.yaml").read_text()
    assert f"reward: grader:{grader_file}" in config and "group_size: 3" in config  # round(2 x 1.5)
    assert "max_new_tokens: 8" in config and "lr: 5.0e-05" in config  # grpo's LoRA default, multiplier 1

    events = list(client.fine_tuning.jobs.list_events(check_job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    trained = [e for e in metrics if "train_reward_mean" in e.data]
    assert sorted(e.data["step"] for e in trained) == [1, 2]
    assert all(0.0 <= e.data["train_reward_mean"] <= 1.0 for e in trained)
    validated = sorted(e.data["step"] for e in metrics if "valid_reward_mean" in e.data)
    assert validated[0] == 0 and validated[-1] == 2  # the validation prompts, scored before and after
    (result,) = done.result_files
    header = client.files.content(result).text.splitlines()[0]
    assert header.endswith("train_reward_mean,valid_reward_mean")

    multi_done = wait_for(client, multi_job.id, {"succeeded"})
    assert multi_done.method.reinforcement is not None
    multi_raw = server.http("GET", f"/fine_tuning/jobs/{multi_job.id}").json()
    assert multi_raw["method"]["reinforcement"]["grader"] == multi
    rewards = [
        e.data["train_reward_mean"]
        for e in client.fine_tuning.jobs.list_events(multi_job.id, limit=100)
        if e.type == "metrics" and "train_reward_mean" in e.data
    ]
    assert len(rewards) == 2 and all(0.0 < r <= 1.0 for r in rewards)  # the length grader pays every sample
    samples = [json.loads(line) for line in (server.home / "runs" / multi_job.id / "samples.jsonl").open()]
    assert samples
    for s in samples:  # the formula over the two graders, recomputed by hand ("Say alpha" -> alpha)
        answer = 1.0 if s["prompt"].split()[-1] in s["completion"].lower() else 0.0
        length = min(len(s["completion"]), 100) / 100
        assert s["reward"] == pytest.approx(0.5 * answer + 0.5 * length)


@pytest.mark.parametrize(
    "grader, message",
    [
        ({**CHECK, "operation": "foo"}, "grader.operation: 'foo' is not one of eq, ne, like, ilike"),
        (
            {"type": "multi", "graders": {"a": {**CHECK, "operation": "foo"}}, "calculate_output": "a"},
            "grader.graders.a.operation: 'foo' is not one of eq, ne, like, ilike",
        ),
        ({**LENGTH, "source": "def grade(sample):\n    return 1\n"}, "grader.source: grade must take two arguments"),
        (None, "method.reinforcement.grader: missing"),
    ],
)
def test_a_bad_grader_is_a_400_on_method(server, rft_files, grader, message):
    client = server.client()
    train = upload(client, rft_files["train"])
    with pytest.raises(openai.BadRequestError) as e:
        rft_job(client, train, grader)
    assert e.value.status_code == 400
    error = e.value.body
    assert error["param"] == "method" and message in error["message"], error


def test_extension_fields_for_reinforcement_only(server, rft_files):
    client = server.client()
    train = upload(client, rft_files["train"])
    with pytest.raises(openai.BadRequestError) as e:
        tiny_job(client, train, tunesmith={"group_size": 4})
    assert e.value.body["param"] == "tunesmith.group_size"
    with pytest.raises(openai.BadRequestError) as e:
        rft_job(client, train, CHECK, tunesmith={**SMALL, "method": "full"})
    assert e.value.body["param"] == "tunesmith.method"


def test_malformed_rft_file_and_rows_without_the_graders_fields_fail_the_job(server, rft_files):
    client = server.client()
    bad, unanswered = upload(client, rft_files["bad"]), upload(client, rft_files["unanswered"])
    job = rft_job(client, bad, CHECK)
    failed = wait_for(client, job.id, {"failed"}, timeout=60)
    assert failed.error.param == "training_file" and failed.error.code == "invalid_training_file"
    assert f"{bad}:2:" in failed.error.message and f"{bad}:3:" in failed.error.message
    assert not (server.home / "runs" / job.id).exists()

    job = rft_job(client, unanswered, CHECK)
    failed = wait_for(client, job.id, {"failed"}, timeout=60)
    assert f"{unanswered}:1: missing `reference_answer` (needed by reward 'grader')" in failed.error.message
    assert f"{unanswered}:2:" in failed.error.message


def test_python_graders_can_be_turned_off(tmp_path, built_tiny, rft_files):
    """`serve --no-python-graders` refuses a python grader, alone or inside a multi; the others still run."""
    server = Server(tmp_path, workers=0, extra=["--no-python-graders"]).start()
    try:
        client = server.client()
        train = upload(client, rft_files["train"])
        both = {"type": "multi", "graders": {"answer": CHECK, "length": LENGTH}, "calculate_output": "answer + length"}
        for grader in (LENGTH, both):
            with pytest.raises(openai.BadRequestError, match="python graders are turned off") as refused:
                rft_job(client, train, grader)
            assert refused.value.body["param"] == "method"
        assert rft_job(client, train, CHECK).status == "validating_files"
    finally:
        server.stop()
