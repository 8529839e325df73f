"""No job is lost: a worker killed with SIGKILL, or the whole server stopped with SIGTERM, mid-job; the
job resumes from its last checkpoint and ends with the weights an uninterrupted run ends with."""

from __future__ import annotations

import signal

import pytest

from tests.service.conftest import Server, tiny_job, upload, wait_for

openai = pytest.importorskip("openai")
STEPS = 12


def has_checkpoint(client):
    return lambda job: bool(client.fine_tuning.jobs.checkpoints.list(job.id).data)


def adapter_weights(home, job_id):
    from safetensors.torch import load_file

    return load_file(str(home / "runs" / job_id / "adapter" / "adapter_model.safetensors"))


def assert_same_weights(a, b):
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_worker_killed_mid_job_is_resumed_by_another(tmp_path, built_tiny, data_dir):
    server = Server(tmp_path, workers=0, lease_s=3.0).start()
    try:
        client = server.client()
        train = upload(client, data_dir / "train.jsonl")
        first = server.worker()
        victim = tiny_job(client, train, steps=STEPS, save_every=1, seed=3)
        reference = tiny_job(client, train, steps=STEPS, save_every=1, seed=3)
        wait_for(client, victim.id, {"running"}, check=has_checkpoint(client))
        first.send_signal(signal.SIGKILL)
        first.wait()
        server.worker(), server.worker()  # another machine's workers: one takes the victim once its lease expires
        done = wait_for(client, victim.id, {"succeeded"})
        wait_for(client, reference.id, {"succeeded"})
        messages = [e.message for e in client.fine_tuning.jobs.list_events(victim.id, limit=100)]
        assert any(m.startswith("resumed from") for m in messages), messages
        assert done.trained_tokens == client.fine_tuning.jobs.retrieve(reference.id).trained_tokens
        assert_same_weights(adapter_weights(tmp_path, victim.id), adapter_weights(tmp_path, reference.id))
    finally:
        server.stop()


def test_server_restart_mid_job_requeues_and_finishes(tmp_path, built_tiny, data_dir):
    server = Server(tmp_path, workers=1).start()
    client = server.client()
    job = tiny_job(client, upload(client, data_dir / "train.jsonl"), steps=STEPS, save_every=1)
    try:
        wait_for(client, job.id, {"running"}, check=has_checkpoint(client))
    finally:
        server.stop(signal.SIGTERM)  # graceful: the worker checkpoints the run and puts the job back
    assert server.process.returncode == 0
    server = Server(tmp_path, workers=1).start()
    try:
        client = server.client()
        assert client.fine_tuning.jobs.retrieve(job.id).status in ("queued", "running", "succeeded")
        wait_for(client, job.id, {"succeeded"})
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert "Worker shut down: job checkpointed and queued again" in messages
        assert any(m.startswith("resumed from") for m in messages), messages
    finally:
        server.stop()
