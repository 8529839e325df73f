"""Auth, errors, files, and the job lifecycle (create -> succeeded, DPO, validation failure, cancel,
pause and resume), through the openai SDK against a real server with two workers."""

from __future__ import annotations

import csv
import io
import json
import time

import httpx
import pytest
import torch

from tests.service.conftest import tiny_job, upload, wait_for

openai = pytest.importorskip("openai")


def error_body(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_auth_and_error_bodies(server, data_dir):
    assert server.http("GET", "/files", owner=None).status_code == 401
    assert error_body(server.http("GET", "/files", owner=None))["code"] == "invalid_api_key"
    wrong = server.http("GET", "/fine_tuning/jobs", owner=None, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and error_body(wrong)["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).files.list()

    missing = server.http("GET", "/fine_tuning/jobs/ftjob-nope")
    assert missing.status_code == 404 and error_body(missing)["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        server.client().fine_tuning.jobs.retrieve("ftjob-nope")

    invalid = server.http("POST", "/fine_tuning/jobs", json={"model": "tiny-random-llama"})
    assert invalid.status_code == 422 and error_body(invalid)["param"] == "training_file"
    bad_limit = server.http("GET", "/fine_tuning/jobs", params={"limit": "many"})
    assert bad_limit.status_code == 422 and error_body(bad_limit)["param"] == "limit"

    big = server.http(
        "POST", "/files", data={"purpose": "fine-tune"}, files={"file": ("big.jsonl", b"x" * (1 << 20) * 2)}
    )
    assert big.status_code == 413 and error_body(big)["code"] == "file_too_large"
    assert not [p for p in (server.home / "files").iterdir() if p.name.startswith(".tmp")]

    unknown_model = server.http("POST", "/fine_tuning/jobs", json={"model": "gpt-4o", "training_file": "file-x"})
    assert unknown_model.status_code == 400 and error_body(unknown_model)["param"] == "model"

    schema = httpx.get(server.url.removesuffix("/v1") + "/openapi.json")
    assert schema.status_code == 200 and "/v1/fine_tuning/jobs" in schema.json()["paths"]


def test_files_and_owners(server, data_dir):
    alice, bob = server.client("alice"), server.client("bob")
    with open(data_dir / "train.jsonl", "rb") as f:
        created = alice.files.create(file=("../../etc/passwd", f), purpose="fine-tune")
    assert created.id.startswith("file-") and created.object == "file" and created.status == "processed"
    assert created.bytes == (data_dir / "train.jsonl").stat().st_size and created.filename == "passwd"
    assert (server.home / "files" / created.id).read_bytes() == (data_dir / "train.jsonl").read_bytes()
    assert alice.files.retrieve(created.id).filename == "passwd"
    assert alice.files.content(created.id).read() == (data_dir / "train.jsonl").read_bytes()
    assert created.id in [f.id for f in alice.files.list()]

    assert created.id not in [f.id for f in bob.files.list()]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(created.id)
    with pytest.raises(openai.BadRequestError):  # bob cannot train on alice's file
        tiny_job(bob, created.id)

    assert alice.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(created.id)


def test_sft_and_dpo_jobs_succeed(server, data_dir):
    client = server.client()
    train, valid, pairs = (upload(client, data_dir / n) for n in ("train.jsonl", "valid.jsonl", "pairs.jsonl"))
    sft = tiny_job(
        client,
        train,
        validation_file=valid,
        suffix="demo",
        seed=7,
        metadata={"team": "a"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 2.0}},
        },
    )
    dpo = tiny_job(
        client,
        pairs,
        steps=4,
        metadata={"team": "b"},
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    assert sft.status == "validating_files" and sft.object == "fine_tuning.job" and sft.fine_tuned_model is None
    done = wait_for(client, sft.id, {"succeeded"})
    assert done.fine_tuned_model == f"ft:tiny-random-llama:alice:demo:{sft.id[-8:]}"
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 8  # auto -> min(8, rows)
    assert done.hyperparameters.learning_rate_multiplier == 2.0
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at and done.seed == 7
    config = (server.home / "runs" / sft.id / "config.yaml").read_text()
    assert "lr: 0.0004" in config and "epochs: 2" in config  # 2.0 x tunesmith's LoRA default 2e-4

    # the run directory is an ordinary tunesmith run
    run = json.loads((server.home / "runs" / sft.id / "run.json").read_text())
    assert run["steps"] == 6 and (server.home / "runs" / sft.id / "adapter" / "adapter_config.json").is_file()

    # events: newest first, auto-pagination over pages of 2 terminates and sees each event once
    events = list(client.fine_tuning.jobs.list_events(sft.id, limit=2))
    assert len(events) == len({e.id for e in events}) > 6
    assert events[0].message == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert {e.data["step"] for e in metrics} == {1, 2, 3, 4, 5, 6}
    assert any("valid_loss" in e.data for e in metrics)  # the validation file is evaluated at the end

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(sft.id, limit=1))
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[1].metrics.train_loss is not None

    (result,) = done.result_files
    rows = list(csv.DictReader(io.StringIO(client.files.content(result).text)))
    assert {int(r["step"]) for r in rows} == {1, 2, 3, 4, 5, 6} and rows[0]["train_loss"]
    assert client.files.retrieve(result).purpose == "fine-tune-results"

    model_ids = [m.id for m in client.models.list()]
    assert "tiny-random-llama" in model_ids and done.fine_tuned_model in model_ids
    assert f"{done.fine_tuned_model}:ckpt-step-2" in model_ids
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "alice"
    assert done.fine_tuned_model not in [m.id for m in server.client("bob").models.list()]
    with pytest.raises(openai.NotFoundError):
        server.client("bob").models.retrieve(done.fine_tuned_model)

    dpo_done = wait_for(client, dpo.id, {"succeeded"})
    assert dpo_done.method.type == "dpo" and dpo_done.hyperparameters.beta == 0.2
    assert "beta: 0.2" in (server.home / "runs" / dpo.id / "config.yaml").read_text()

    # lists: newest first, metadata filter, auto-pagination with limit=1 terminates
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)][:2] == [dpo.id, sft.id]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [sft.id]
    page = client.fine_tuning.jobs.list(limit=1)
    assert page.has_more and page.data[0].id == dpo.id
    with pytest.raises(openai.NotFoundError):
        server.client("bob").fine_tuning.jobs.retrieve(sft.id)
    with pytest.raises(openai.NotFoundError):
        server.client("bob").fine_tuning.jobs.cancel(sft.id)
    assert sft.id not in [j.id for j in server.client("bob").fine_tuning.jobs.list()]
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(sft.id)


def test_full_fine_tunes_and_their_checkpoints_are_served_as_models(server, data_dir):
    """A full fine-tune is served as its own base, and so is each checkpoint: a model directory whose weights
    are the checkpoint's (the last one's equal the saved model's)."""
    from safetensors.torch import load_file

    client = server.client()
    job = tiny_job(client, upload(client, data_dir / "train.jsonl"), steps=4, tunesmith={"method": "full"})
    done = wait_for(client, job.id, {"succeeded"})
    checkpoints = {
        c.step_number: c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)
    }
    assert set(checkpoints) == {2, 4} and set(checkpoints.values()) <= {m.id for m in client.models.list()}
    last = server.home / "checkpoints" / job.id / "step-4"
    saved, served = (
        load_file(server.home / "runs" / job.id / "model" / "model.safetensors"),
        load_file(last / "model.safetensors"),
    )
    assert saved.keys() == served.keys() and all(torch.equal(saved[k], served[k]) for k in saved)
    replies = {}
    for model in (done.fine_tuned_model, checkpoints[4], checkpoints[2]):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
        )
        replies[model] = reply.choices[0].message.content
    assert replies[done.fine_tuned_model] == replies[checkpoints[4]]  # the same weights, the same greedy reply
    for missing in (f"{done.fine_tuned_model}:ckpt-step-3", f"{done.fine_tuned_model}:ckpt-step-abc"):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=missing, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_malformed_training_file_fails_the_job(server, data_dir):
    client = server.client()
    bad = upload(client, data_dir / "bad.jsonl")
    job = tiny_job(client, bad)
    failed = wait_for(client, job.id, {"failed"}, timeout=60)
    assert failed.error.param == "training_file" and failed.error.code == "invalid_training_file"
    assert f"{bad}:2:" in failed.error.message and f"{bad}:3:" in failed.error.message
    assert not (server.home / "runs" / job.id).exists()  # never started training


def test_cancel_stops_within_seconds_and_keeps_checkpoint(server, data_dir):
    client = server.client()
    job = tiny_job(client, upload(client, data_dir / "train.jsonl"), steps=400, save_every=1)
    wait_for(client, job.id, {"running"}, check=lambda j: client.fine_tuning.jobs.checkpoints.list(j.id).data)
    with pytest.raises(openai.ConflictError, match="training_file of job"):  # the running job still reads it
        client.files.delete(job.training_file)
    asked = time.time()
    client.fine_tuning.jobs.cancel(job.id)
    cancelled = wait_for(client, job.id, {"cancelled"}, timeout=30)
    assert time.time() - asked < 15 and cancelled.finished_at is not None and cancelled.fine_tuned_model is None
    assert list((server.home / "runs" / job.id / "checkpoints").glob("step-*"))
    assert any(e.message == "Job cancelled" for e in client.fine_tuning.jobs.list_events(job.id, limit=50))
    assert client.files.delete(job.training_file).deleted


def test_pause_and_resume_continue_from_the_checkpoint(server, data_dir):
    client = server.client()
    job = tiny_job(client, upload(client, data_dir / "train.jsonl"), steps=30, save_every=1)
    wait_for(client, job.id, {"running"}, check=lambda j: client.fine_tuning.jobs.checkpoints.list(j.id).data)
    client.post(f"/fine_tuning/jobs/{job.id}/pause", cast_to=object)
    paused = wait_for(client, job.id, {"paused"}, timeout=30)
    assert paused.status == "paused"
    paused_at = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
    assert paused_at < 30
    client.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=object)
    done = wait_for(client, job.id, {"succeeded"})
    assert done.trained_tokens > 0
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("resumed from") and f"step {paused_at}" in m for m in messages), messages


def test_keys_create_prints_the_key_once_and_stores_its_hash(tmp_path):
    import subprocess
    import sys

    from tunesmith.serve.auth import hash_key, owner_of
    from tunesmith.serve.db import ApiKey, make_sessions

    out = subprocess.run(
        [sys.executable, "-m", "tunesmith", "keys", "create", "carol", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip()
    with make_sessions(f"sqlite:///{tmp_path / 'tunesmith.db'}")() as session:
        assert owner_of(session, key) == "carol" and owner_of(session, key + "x") is None
        (row,) = session.query(ApiKey).all()
        assert row.sha256 == hash_key(key) and key not in (tmp_path / "tunesmith.db").read_bytes().decode("latin-1")
