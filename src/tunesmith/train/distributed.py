"""Data-parallel training over torchrun processes: same step, same examples, summed gradients.

    torchrun --nproc_per_node N -m tunesmith sft ...     (or `tunesmith sft --nproc N ...`)

Every process holds the whole model (LoRA/QLoRA: the frozen base plus the adapter) and knows the whole
global batch of each step (the data order depends only on seed and step). The step's micro-batches are
dealt out round-robin, rank r taking micro-batches r, r + N, ...; each process backpropagates its share
of the loss, normalised by the trained tokens of the WHOLE step, and one all-reduce sums the gradients:
the update is the one a single process would make from the same global batch, so 1 and N processes
train the same model (up to float summation order). Gradients are summed by hand (one flat all-reduce
per step, as DDP's reducer does) rather than through the DistributedDataParallel wrapper, because the
recipes run their own forwards (decoder + LM head at trained positions only).

Only rank 0 writes: run directory, config, metrics, checkpoints, the result and the report. Backends:
gloo on CPU, NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device this process must use (cuda:LOCAL_RANK), if set

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's part of a step's micro-batches: items rank, rank + world, ..."""
        return list(items[self.rank :: self.world])

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def sum(self, value: float) -> float:
        """A number summed over all processes."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t.item())

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's .grad over the processes, in one flat all-reduce."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def _comm_device(self) -> torch.device:
        return self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")


def init_distributed(device: str = "auto") -> Dist:
    """The process group when launched by torchrun (WORLD_SIZE > 1), else a single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:  # share the machine's cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(rank, world, dev)


def shut_down(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def single_process_only(recipe: str) -> None:
    """Recipes without data-parallel support refuse to run N copies that would write the same run."""
    from tunesmith.errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{recipe}: runs in one process for now (sft runs under torchrun / --nproc)")


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> int:
    """`tunesmith sft --nproc N ...`: run the same command as N processes on this machine via torchrun."""
    import subprocess
    import sys

    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "tunesmith", *rest]
    return subprocess.run(command).returncode
