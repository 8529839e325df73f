"""tunesmith: turn a general pre-trained language model into a specialist, cheaply and reversibly.

The Python API (tunesmith/api.py): `tunesmith.sft(...)`, `dpo`, `kto`, `reward`, `ppo`, `grpo`, `plan`,
`evaluate`, `load`; errors a user can cause are `ConfigError`, `DataError`, `ModelError`, `OutputError`.
"""

__version__ = "0.1.0"

from tunesmith.api import dpo, evaluate, grpo, kto, load, plan, ppo, reward, sft  # noqa: E402
from tunesmith.errors import ConfigError, DataError, ModelError, OutputError, TunesmithError  # noqa: E402

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputError",
    "TunesmithError",
    "dpo",
    "evaluate",
    "grpo",
    "kto",
    "load",
    "plan",
    "ppo",
    "reward",
    "sft",
]
