"""The same server and workers on PostgreSQL (`--db postgresql://...`): claims take FOR UPDATE SKIP LOCKED.

The tests start their own throwaway PostgreSQL cluster (`initdb` + `pg_ctl` in a temporary directory, on a
free loopback port, as the `postgres` user when the tests run as root, since PostgreSQL refuses root), and
stop and delete it after. TUNESMITH_TEST_POSTGRES=postgresql://... uses a server of your own instead (a
throwaway database is created and dropped in it). Skipped, saying why, only where no PostgreSQL binaries
exist (`scripts/install-test-deps` installs them)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.service.conftest import Server, free_port, tiny_job, upload, wait_for

openai = pytest.importorskip("openai")
psycopg = pytest.importorskip("psycopg")


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, or where Debian puts it (/usr/lib/postgresql/VERSION/bin)."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: run its binaries as the `postgres` user then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="module")
def postgres_server():
    """The admin URL of a PostgreSQL server: a throwaway cluster started here, or TUNESMITH_TEST_POSTGRES."""
    if os.environ.get("TUNESMITH_TEST_POSTGRES"):
        yield os.environ["TUNESMITH_TEST_POSTGRES"]
        return
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): run scripts/install-test-deps")
    root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    try:
        subprocess.run(
            as_postgres([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -h 127.0.0.1 -k {root} -F"
        subprocess.run(
            as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    admin = psycopg.connect(postgres_server, autocommit=True, connect_timeout=5)
    name = f"tunesmith_service_{secrets.token_hex(4)}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
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
