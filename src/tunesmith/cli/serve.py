"""`tunesmith serve`, `tunesmith worker`, `tunesmith keys create`: the OpenAI-compatible service."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def _common(p, lease: bool = False) -> None:
    p.add_argument(
        "--home", type=Path, default=None, help="files, runs and the SQLite database (default: $TUNESMITH_HOME/serve)"
    )
    p.add_argument(
        "--db",
        default=None,
        help="database URL (default: SQLite at HOME/tunesmith.db); "
        "postgresql://user@host/db for workers on several machines",
    )
    if lease:
        p.add_argument(
            "--lease-s",
            type=float,
            default=15.0,
            help="a job whose worker has not heartbeaten this long is resumed by another (default 15)",
        )
        p.add_argument("--heartbeat-s", type=float, default=2.0, help="seconds between heartbeats (default 2)")


def register(sub) -> None:
    p = sub.add_parser("serve", help="the OpenAI-compatible fine-tuning service (files, jobs, models, chat)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    _common(p, lease=True)
    p.add_argument("--workers", type=int, default=1, help="worker processes started here (0: only the API)")
    p.add_argument("--max-file-mb", type=float, default=512.0, help="largest upload (413 beyond it)")
    p.add_argument("--max-adapters", type=int, default=8, help="fine-tunes kept loaded for chat (LRU)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="another base model to serve beside the aliases (repeatable)",
    )
    p.add_argument(
        "--no-python-graders",
        dest="python_graders",
        action="store_false",
        help="refuse reinforcement jobs whose grader is (or combines) a python grader: its code runs on the "
        "workers in a process of its own, with the workers' permissions, not in a sandbox",
    )
    p.set_defaults(handler=serve)

    w = sub.add_parser("worker", help="run queued fine-tuning jobs from a `tunesmith serve` database")
    _common(w, lease=True)
    w.add_argument("--once", action="store_true", help="exit when no job is waiting")
    w.set_defaults(handler=worker)

    k = sub.add_parser("keys", help="API keys for `tunesmith serve`")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = ksub.add_parser("create", help="create a key for an owner; it is printed once, stored hashed")
    create.add_argument("name", help="the owner: the key's jobs, files and models belong to it")
    _common(create)
    create.set_defaults(handler=create_key)


def _settings(args):
    from tunesmith.serve.settings import Settings, default_home

    settings = Settings(
        home=args.home or default_home(),
        db=args.db,
        lease_s=getattr(args, "lease_s", 15.0),
        heartbeat_s=getattr(args, "heartbeat_s", 2.0),
        max_file_mb=getattr(args, "max_file_mb", 512.0),
        max_adapters=getattr(args, "max_adapters", 8),
        models=getattr(args, "model", []),
        python_graders=getattr(args, "python_graders", True),
    )
    settings.make_dirs()
    return settings


def serve(args) -> int:
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.worker import spawn_workers, stop_workers

    settings = _settings(args)
    app = create_app(settings)
    workers = spawn_workers(settings, args.workers)
    print(
        f"tunesmith serve: http://{args.host}:{args.port}/v1 (home {settings.home}, "
        f"{args.workers} worker{'s' if args.workers != 1 else ''})",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn catches SIGTERM and Ctrl-C, stops serving, then raises the signal again with the handler
    # it found: a no-op one lets the workers be stopped below, each checkpointing its running job and
    # putting it back in the queue, instead of dying with the web process
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        stop_workers(workers)
    return 0


def worker(args) -> int:
    from tunesmith.serve.worker import run_worker

    run_worker(_settings(args), once=args.once)
    return 0


def create_key(args) -> int:
    from tunesmith.serve.auth import create_key as make_key
    from tunesmith.serve.db import make_sessions

    settings = _settings(args)
    with make_sessions(settings.db_url)() as session:
        key = make_key(session, args.name)
    print(key)
    print(f"(owner {args.name}; shown once, stored as its sha256 in {settings.db_url.split('@')[-1]})", file=sys.stderr)
    return 0
