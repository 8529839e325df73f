"""The service's settings: one dataclass shared by the web process, the workers and each job's child."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.models import tunesmith_home


def default_home() -> Path:
    return tunesmith_home() / "serve"


@dataclass
class Settings:
    home: Path = field(default_factory=default_home)
    db: str | None = None  # SQLAlchemy URL; None: SQLite at HOME/tunesmith.db
    max_file_mb: float = 512.0
    max_adapters: int = 8
    models: list[str] = field(default_factory=list)  # extra base models served beside the aliases
    lease_s: float = 15.0  # a job whose worker stops heartbeating this long is claimed again
    heartbeat_s: float = 2.0
    cancel_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this long
    python_graders: bool = True  # reinforcement jobs may bring python graders (code run on the workers)

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()

    @property
    def db_url(self) -> str:
        if self.db is None:
            return f"sqlite:///{self.home / 'tunesmith.db'}"
        if self.db.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver we install
            return "postgresql+psycopg://" + self.db.split("://", 1)[1]
        return self.db

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def checkpoints_dir(self) -> Path:
        """Each checkpoint exported as something servable (an adapter, or a model for a full fine-tune): the run
        itself keeps only its newest few."""
        return self.home / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def graders_dir(self) -> Path:
        """Each reinforcement job's grader as JSON: its run's reward is grader:PATH."""
        return self.home / "graders"

    def make_dirs(self) -> None:
        for d in (self.home, self.files_dir, self.runs_dir, self.checkpoints_dir, self.logs_dir, self.graders_dir):
            d.mkdir(parents=True, exist_ok=True)

    def worker_args(self) -> list[str]:
        """The flags that give a `tunesmith worker` (or a job's child) these settings."""
        args = ["--home", str(self.home), "--lease-s", str(self.lease_s), "--heartbeat-s", str(self.heartbeat_s)]
        return args + (["--db", self.db] if self.db else [])
