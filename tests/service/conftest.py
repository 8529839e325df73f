"""A real `tunesmith serve` on a free loopback port, with real worker processes, driven through the
official openai SDK (and plain HTTP where the SDK hides the status code or body)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import chat_rows, preference_rows, write_jsonl

KEYS = {"alice": "sk-test-alice", "bob": "sk-test-bob"}
openai = pytest.importorskip("openai")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    home: Path
    workers: int = 2
    lease_s: float = 5.0
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    spawned: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TUNESMITH_API_KEYS": ",".join(f"{o}:{k}" for o, k in KEYS.items()),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> Server:
        log = open(self.home / "server.log", "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunesmith",
                "serve",
                "--port",
                str(self.port),
                "--home",
                str(self.home),
                "--workers",
                str(self.workers),
                "--lease-s",
                str(self.lease_s),
                "--heartbeat-s",
                "0.5",
                "--max-file-mb",
                "1",
                *self.extra,
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.process.poll() is None, (self.home / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError((self.home / "server.log").read_text()[-3000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for p in self.spawned:
            if p.poll() is None:
                p.kill()
                p.wait()

    def worker(self) -> subprocess.Popen:
        """A separate `tunesmith worker` against the same database (as on another machine)."""
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunesmith",
                "worker",
                "--home",
                str(self.home),
                "--lease-s",
                str(self.lease_s),
                "--heartbeat-s",
                "0.5",
            ],
            env=self.env(),
            stdout=open(self.home / f"worker-{len(self.spawned)}.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        self.spawned.append(p)
        return p

    def client(self, owner: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=KEYS[owner], max_retries=0, timeout=30)

    def http(self, method: str, path: str, owner: str | None = "alice", **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEYS[owner]}"} if owner else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="session")
def built_tiny(tiny_dir) -> Path:
    """Build the tiny model once, before any worker needs it."""
    return tiny_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory, built_tiny) -> Server:
    srv = Server(tmp_path_factory.mktemp("serve")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("service_data")
    write_jsonl(d / "train.jsonl", chat_rows(24))
    write_jsonl(d / "valid.jsonl", chat_rows(8, seed=1))
    write_jsonl(d / "pairs.jsonl", preference_rows(16))
    write_jsonl(d / "bad.jsonl", [chat_rows(1)[0], '{"messages": [}', {"messages": "hello"}, {"nothing": 1}])
    return d


def wait_for(client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 150.0, check=None):
    """Poll the job until its status is one of `statuses` (and `check(job)` holds, when given)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses and (check is None or check(job)):
            return job
        if job.status in {"failed", "cancelled", "succeeded"} - statuses:
            raise AssertionError(f"job {job_id} is {job.status}: {job.error}")
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")


def tiny_job(client: openai.OpenAI, training_file: str, steps: int = 6, save_every: int = 2, **kwargs):
    extension = {"max_steps": steps, "save_every": save_every, **kwargs.pop("tunesmith", {})}
    return client.fine_tuning.jobs.create(
        model="tiny-random-llama", training_file=training_file, extra_body={"tunesmith": extension}, **kwargs
    )


def upload(client: openai.OpenAI, path: Path) -> str:
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id
