"""Run several `tunesmith` commands in one torchrun launch, on one process group set up here once:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/invariants/torchrun_commands.py CMDS.json

CMDS.json holds a list of argument lists. Starting Python, torch and transformers costs more than the tiny
runs themselves, so the distributed invariants pay for it once. The recipes leave a process group they
did not create alive (`Dist.owns_group`), so the commands run one after another in the same processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tunesmith.cli import main

if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    codes = []
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        codes.append(main(argv))
        if codes[-1]:
            break
    torch.distributed.destroy_process_group()
    sys.exit(max(codes))
