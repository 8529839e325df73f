"""A worker: claim a job (a lease renewed by a heartbeat), run it in a child process, record the outcome.

Claiming is one guarded UPDATE (`... WHERE id = ? AND status = <what we saw>`): of two workers racing
for a job only one changes a row. On PostgreSQL the candidate is first locked with `FOR UPDATE SKIP
LOCKED`, so racing workers pick different jobs instead of colliding; SQLite ignores that clause and
serialises writers itself. A running job whose lease has expired (its worker was killed, the machine
lost) is claimed like a queued one and resumes from its last checkpoint.

SIGTERM to a worker: SIGTERM to its job's child (which finishes the step, saves a checkpoint and exits
143), the job returns to `queued`, the worker exits.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import sessionmaker

from tunesmith.serve.db import Job, make_sessions, new_id, now
from tunesmith.serve.jobs import add_event, fail, record_checkpoints, succeed, validate_job
from tunesmith.serve.settings import Settings

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the worker dies (kill -9), so that the job never runs
    twice at once once its lease expires and another worker resumes it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _log(message: str) -> None:
    print(f"[worker {os.getpid()}] {message}", file=sys.stderr, flush=True)


class Worker:
    def __init__(self, settings: Settings, sessions: sessionmaker | None = None):
        self.settings = settings
        self.sessions = sessions or make_sessions(settings.db_url)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"
        self.stopping = False
        self.child: subprocess.Popen | None = None

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, once: bool = False, poll_s: float = 1.0) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        _log(f"{self.name} polling {self.settings.db_url.split('@')[-1]}")
        while not self.stopping:
            job_id = self.claim()
            if job_id is None:
                if once:
                    return
                time.sleep(poll_s)
                continue
            try:
                self.work(job_id)
            except Exception as e:  # a bug here must not stop the worker: the job fails, the queue goes on
                _log(f"{job_id}: {type(e).__name__}: {e}")
                traceback.print_exc()
                with self.sessions() as session:
                    job = session.scalar(select(Job).where(Job.id == job_id))
                    if job is not None and job.worker == self.name:
                        fail(session, job, f"internal error in the worker: {type(e).__name__}: {e}", "internal_error")
                        session.commit()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def claim(self) -> str | None:
        """The oldest job that is waiting (validating, queued) or whose running lease expired."""
        t = time.time()
        claimable = or_(
            Job.status.in_(("validating_files", "queued")),
            and_(Job.status == "running", or_(Job.lease_until.is_(None), Job.lease_until < t)),
        )
        with self.sessions() as session:
            candidates = session.execute(
                select(Job.id, Job.status, Job.worker)
                .where(claimable)
                .order_by(Job.seq)
                .limit(5)
                .with_for_update(skip_locked=True)
            ).all()
            for job_id, status, worker in candidates:
                claimed = session.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.status == status,
                        claimable,
                        Job.worker.is_(None) if worker is None else Job.worker == worker,
                    )
                    .values(worker=self.name, lease_until=t + self.settings.lease_s)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:
                    session.commit()
                    return job_id
            session.rollback()
        return None

    def heartbeat(self, session: Any, job: Job) -> bool:
        """Renew the lease; False when the job is no longer ours (it expired and another worker took it)."""
        renewed = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.worker == self.name)
            .values(lease_until=time.time() + self.settings.lease_s)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return renewed.rowcount == 1

    # ---- one job ----------------------------------------------------------------------------------
    def work(self, job_id: str) -> None:
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            if job.status == "validating_files":
                validate_job(session, self.settings, job)
                job.worker = job.lease_until = None
                session.commit()
                return  # queued now: claimed again by whoever is free first
            if job.requested == "cancel":  # cancelled while waiting
                self._finish(session, job, "cancelled")
                return
            resumed = job.status == "running"  # its previous worker's lease expired
            job.status, job.attempts = "running", (job.attempts or 0) + 1
            job.estimated_finish = None
            add_event(
                session,
                job.id,
                "Fine-tuning job resumed from its last checkpoint"
                if resumed or job.attempts > 1
                else "Fine-tuning job started",
            )
            session.commit()
        _log(f"running {job_id} (attempt {job.attempts})")
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.logs_dir / f"{job_id}.log", "ab") as log:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "tunesmith.serve.jobs", job_id, "--home", str(self.settings.home)]
                + (["--db", self.settings.db] if self.settings.db else []),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            rc, lost = self._watch(job_id)
            self.child = None
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            if lost or job.worker != self.name:
                _log(f"{job_id}: lease lost to {job.worker}; leaving it")
                return
            record_checkpoints(session, self.settings, job)
            self._outcome(session, job, rc)
            session.commit()

    def _watch(self, job_id: str) -> tuple[int, bool]:
        """Heartbeat while the child runs; pass on cancel and pause as SIGTERM (SIGKILL after a grace)."""
        assert self.child is not None
        signalled_at: float | None = None
        while True:
            try:
                return self.child.wait(timeout=min(1.0, self.settings.heartbeat_s)), False
            except subprocess.TimeoutExpired:
                pass
            with self.sessions() as session:
                job = session.scalar(select(Job).where(Job.id == job_id))
                if not self.heartbeat(session, job):
                    self.child.kill()
                    return self.child.wait(), True
                if job.requested and signalled_at is None:
                    self.child.send_signal(signal.SIGTERM)
                    signalled_at = time.time()
            if self.stopping and signalled_at is None:
                signalled_at = time.time()  # _on_signal has sent SIGTERM already
            if signalled_at is not None and time.time() - signalled_at > self.settings.cancel_grace_s:
                self.child.kill()

    def _outcome(self, session: Any, job: Job, rc: int) -> None:
        if rc == 0:
            try:
                succeed(session, self.settings, job)
            except (OSError, ValueError) as e:
                fail(session, job, f"the run finished but its results could not be read: {e}", "results_unreadable")
            job.worker = job.lease_until = job.requested = None
        elif job.requested == "cancel":
            self._finish(session, job, "cancelled")
        elif job.requested == "pause":
            job.status, job.worker, job.lease_until, job.requested = "paused", None, None, None
            job.estimated_finish = None
            add_event(session, job.id, "Job paused; its last checkpoint is kept, resume continues from it")
        elif self.stopping:
            job.status, job.worker, job.lease_until, job.estimated_finish = "queued", None, None, None
            add_event(session, job.id, "Worker shut down: job checkpointed and queued again")
        elif rc == 2:
            error_file = self.settings.logs_dir / f"{job.id}.error.json"
            error = json.loads(error_file.read_text()) if error_file.is_file() else {"message": "bad configuration"}
            fail(
                session,
                job,
                error["message"],
                "invalid_job" if error.get("type") != "DataError" else "invalid_training_file",
                "training_file" if error.get("type") == "DataError" else None,
            )
        else:
            log = self.settings.logs_dir / f"{job.id}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
            fail(session, job, f"the training process exited with code {rc}: " + " | ".join(tail), "training_failed")

    def _finish(self, session: Any, job: Job, status: str) -> None:
        job.status, job.finished_at, job.estimated_finish = status, now(), None
        job.worker = job.lease_until = job.requested = None
        add_event(session, job.id, f"Job {status}")
        session.commit()


def run_worker(settings: Settings, once: bool = False) -> None:
    settings.make_dirs()
    Worker(settings).run(once=once)


def spawn_workers(settings: Settings, n: int) -> list[subprocess.Popen]:
    """`serve --workers N`: N `tunesmith worker` processes beside the web process."""
    cmd = [sys.executable, "-m", "tunesmith", "worker"] + settings.worker_args()
    return [subprocess.Popen(cmd) for _ in range(n)]


def stop_workers(workers: list[subprocess.Popen], timeout: float = 60.0) -> None:
    for p in workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    for p in workers:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
