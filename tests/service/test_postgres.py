"""The same server and workers on PostgreSQL (`--db postgresql://...`): claims take FOR UPDATE SKIP LOCKED.
Runs against TUNESMITH_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test) in a throwaway
database; skipped, saying why, when no server answers there."""

from __future__ import annotations

import os
import secrets

import pytest

from tests.service.conftest import Server, tiny_job, upload, wait_for

openai = pytest.importorskip("openai")
psycopg = pytest.importorskip("psycopg")
ADMIN_URL = os.environ.get("TUNESMITH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url():
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL server at {ADMIN_URL}: {e}")
    name = f"tunesmith_service_{secrets.token_hex(4)}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def test_postgres_files_jobs_and_workers(tmp_path, built_tiny, data_dir, postgres_url):
    server = Server(tmp_path, workers=2, extra=["--db", postgres_url]).start()
    try:
        client = server.client()
        assert not (tmp_path / "tunesmith.db").exists()
        bad = tiny_job(client, upload(client, data_dir / "bad.jsonl"))
        good = tiny_job(client, upload(client, data_dir / "train.jsonl"), steps=4)
        assert wait_for(client, bad.id, {"failed"}, timeout=60).error.param == "training_file"
        done = wait_for(client, good.id, {"succeeded"})
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(good.id)] == [4, 2]
        assert done.fine_tuned_model in [m.id for m in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            server.client("bob").fine_tuning.jobs.retrieve(good.id)
    finally:
        server.stop()
