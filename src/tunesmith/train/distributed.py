"""Data-parallel training over torchrun processes: same step, same examples, summed gradients.

    torchrun --nproc_per_node N [--nnodes M ...] -m tunesmith RECIPE ...   (or `tunesmith RECIPE --nproc N ...`)

Every recipe (sft, dpo, reward, grpo, ppo) runs this way. Every process knows the whole global batch of
each step: the data order depends only on seed and step, and GRPO/PPO sample each micro-batch of prompts
with a seed of its own (seed, step, micro-batch), so the rollouts do not depend on who samples them. The
step's micro-batches are dealt out round-robin, rank r taking micro-batches r, r + N, ...; each process
backpropagates its share of the loss, normalised by the totals of the WHOLE step (trained tokens, pairs,
sequences), and the gradients are summed over the processes: the update is the one a single process makes
from the same global batch, so 1 and N processes train the same model (up to float summation order).
Statistics a step needs from the whole batch (PPO's advantage whitening and KL controller, logged means)
are summed or gathered across the processes, never taken from one process's share.

Two ways to hold the weights:
  * LoRA / QLoRA (and GRPO full fine-tuning): every process holds the whole model, DDP-style. One flat
    all-reduce per step sums the trainable gradients (as DDP's reducer does), done by hand rather than
    through the DistributedDataParallel wrapper because the recipes run their own forwards (decoder + LM
    head at trained positions only).
  * full fine-tuning (sft, dpo, reward): FSDP2 (`fully_shard`), one unit per decoder layer plus a root,
    so weights, gradients and AdamW state are split between the processes. Gradients are reduce-scattered
    as sums, not means. Each forward all-gathers, so every process must run the same number of forwards
    and backwards: a process short of micro-batches repeats one at weight 0 (`Dist.deal`). Checkpoints and
    the saved model are gathered into full tensors on rank 0 first, so their format does not change.
    Each process loads the whole model before sharding it, so the start needs one full copy per process.
    GRPO samples with `generate`, whose forward count differs between processes, so its full fine-tuning
    stays replicated; `--forgetting-every` with full fine-tuning (a whole frozen base copy to compare
    against) is refused for several processes.

Only rank 0 writes: run directory, config, metrics, samples, checkpoints, the result and the report.
Resuming works with the same number of processes. Backends: gloo on CPU, NCCL on CUDA (one GPU per
process, cuda:LOCAL_RANK). tests/invariants/test_distributed_invariant.py checks, for sft (lora, and full
under FSDP), dpo, reward, grpo and ppo, that 1 and 2 processes give the same per-step losses (rewards,
for grpo and ppo) and saved weights within 1e-4, that rank 0 alone wrote the metrics, and that sft, dpo
and FSDP runs resume as two processes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device this process must use (cuda:LOCAL_RANK), if set
    sharded: bool = False  # the weights are split between the processes (FSDP2, full fine-tuning)
    owns_group: bool = False  # this run set up the process group, so `shut_down` ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's part of a step's micro-batches: items rank, rank + world, ..."""
        return list(items[self.rank :: self.world])

    def deal(self, items: Sequence[T]) -> list[tuple[T, float]]:
        """This process's micro-batches with their weights: 1, or 0 for a filler.

        Under FSDP every forward and backward is a collective, so each process must run as many as the
        others: one with fewer micro-batches than ceil(len / world) repeats one at weight 0 (its loss
        counts for nothing). Without sharding nothing is repeated."""
        mine = [(item, 1.0) for item in self.share(items)]
        if self.sharded and items:
            mine += [(items[0], 0.0)] * (-(-len(items) // self.world) - len(mine))
        return mine

    def gather(self, value: T) -> list[T]:
        """Every process's `value` (small Python objects, CPU tensors), in rank order."""
        if not self.active:
            return [value]
        every: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(every, value)
        return every

    def unshare(self, mine: Sequence[T]) -> list[T]:
        """The inverse of `share`: every process's items back in the order of the whole step."""
        parts = self.gather(list(mine))
        return [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]

    def first(self, value: T) -> T:
        """Rank 0's `value`, on every process (one decision for all of them)."""
        return self.gather(value)[0]

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

    def mean_std(self, parts: list[torch.Tensor]) -> tuple[float, float]:
        """Mean and standard deviation (Bessel's, as torch.std) of all values in `parts`, on every process."""
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in parts]) if parts else torch.zeros(0).double()
        n = self.sum(flat.numel())
        mean = self.sum(float(flat.sum())) / max(1, n)
        var = self.sum(float(((flat - mean) ** 2).sum())) / max(1, n - 1)
        return mean, var**0.5

    def sum_means(self, stats):
        """A `RunningMeans` whose sums and count are those of every process together."""
        if self.active:
            parts = self.gather((stats.sums, stats.count))
            keys = dict.fromkeys(k for sums, _ in parts for k in sums)  # a process may have had no items
            stats.sums = {k: sum(sums.get(k, 0.0) for sums, _ in parts) for k in keys}
            stats.count = sum(c for _, c in parts)
        return stats

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's .grad over the processes, in one flat all-reduce (FSDP already did)."""
        if not self.active or self.sharded:
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


def init_distributed(device: str = "auto", shard: bool = False) -> Dist:
    """The process group when launched by torchrun (WORLD_SIZE > 1), else a single-process Dist.
    `shard`: split the weights with FSDP2 (`shard_model`) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns_group = not torch.distributed.is_initialized()  # else a caller set it up and keeps it
    if owns_group:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:  # share the machine's cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(rank, world, dev, sharded=shard, owns_group=owns_group)


def start_processes(cfg, recipe: str, shards_full: bool) -> Dist:
    """A recipe's Dist: full fine-tuning shards with FSDP2 where the recipe allows (`Recipe.shards_full`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_parallel_config(cfg, recipe, world, shards_full)
    return init_distributed(cfg.device, shard=sharded_run(cfg, world, shards_full))


def sharded_run(cfg, world: int, shards_full: bool) -> bool:
    return world > 1 and cfg.method == "full" and shards_full


def check_parallel_config(cfg, recipe: str, world: int, shards_full: bool) -> None:
    """What cannot run as `world` processes, refused before anything starts."""
    from tunesmith.errors import ConfigError

    forgetting = getattr(cfg, "forgetting", None)
    if sharded_run(cfg, world, shards_full) and forgetting is not None and forgetting.every:
        raise ConfigError(
            f"{recipe}: --forgetting-every with --method full runs in one process (the guard keeps a "
            "whole frozen copy of the base, which FSDP's sharded weights cannot be compared with); "
            "drop --nproc, or measure afterwards with `tunesmith eval`"
        )


def shard_model(model: torch.nn.Module, dist: Dist) -> None:
    """FSDP2 on a full fine-tune, in place: one `fully_shard` unit per decoder layer, then the root.

    The recipes call the decoder body themselves and read the LM head's weight directly (train/step.py),
    so the causal-LM wrapper's forward, where FSDP's root hooks would run, never runs. The root unit is
    therefore the decoder body, and the modules beside it (LM head, a reward head) join its group: the
    root keeps its weights unsharded from its forward to the end of backward, so the head's weight is
    whole when the loss reads it, and its gradient is reduce-scattered with the root's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from tunesmith.models.forward import decoder_layers, unwrap

    if not dist.sharded:
        return
    mesh = init_device_mesh(dist._comm_device().type, (dist.world,))
    inner = unwrap(model)
    decoder = inner.get_decoder()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    beside = [(name, m) for name, m in inner.named_children() if m is not decoder]
    for name, module in beside:  # attached only while fully_shard collects the root's parameters
        decoder.add_module(f"_fsdp_{name}", module)
    fully_shard(decoder, mesh=mesh)
    for name, _ in beside:
        del decoder._modules[f"_fsdp_{name}"]
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # sums, not means: every loss is already normalised by the step's global totals
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum


def full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A sharded model's whole weights (and optimizer state, in `optimizer.state_dict()`'s own layout:
    parameters by index) on rank 0's CPU; the other processes get empty dicts. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = cast("dict[str, torch.Tensor]", get_model_state_dict(model, options=options))  # full: plain tensors
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        # a tied weight (LM head = embedding) comes back as one tensor under both names, as in the model's own
        # state_dict, so that save_pretrained stores it once
        if first.setdefault(id(p), name) != name and first[id(p)] in weights:
            weights[name] = weights[first[id(p)]]
    if optimizer is None:
        return weights, None
    by_name: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=options)
    index = {name: i for i, name in enumerate(n for n, p in model.named_parameters() if p.requires_grad)}
    state = {index[name]: value for name, value in by_name.get("state", {}).items()}
    groups = [dict(g, params=[index[name] for name in g["params"]]) for g in by_name.get("param_groups", [])]
    return weights, {"state": state, "param_groups": groups}


def save_checkpoint_on_main(
    dist: Dist,
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 3,
) -> None:
    """Every process calls it; rank 0 writes (under FSDP after gathering the whole state)."""
    from tunesmith.train.checkpoint import save_checkpoint

    if not dist.sharded:
        if dist.is_main:
            save_checkpoint(run_dir, step, model, optimizer, extra, keep)
        return
    weights, opt_state = full_state(model, optimizer)
    assert opt_state is not None  # given the optimizer, full_state returns its state
    if dist.is_main:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        weights = {n: t.contiguous() for n, t in weights.items() if n in trainable}
        save_checkpoint(run_dir, step, model, optimizer, extra, keep, state=(weights, opt_state))


def load_checkpoint_everywhere(
    dist: Dist, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """`load_checkpoint` on every process; under FSDP each process keeps its shard of the whole state."""
    from tunesmith.train.checkpoint import load_checkpoint

    if not dist.sharded:
        return load_checkpoint(path, model, optimizer)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    def restore(weights: dict[str, Any], opt_state: dict) -> None:
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        by_name: dict[str, Any] = {
            "state": {names[i]: v for i, v in opt_state["state"].items()},
            "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in opt_state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    return load_checkpoint(path, model, optimizer, restore=restore)


def shut_down(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.barrier()
        if dist.owns_group:
            torch.distributed.destroy_process_group()


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> int:
    """`tunesmith RECIPE --nproc N ...`: run the same command as N processes on this machine via torchrun."""
    import subprocess
    import sys

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "tunesmith",
        *rest,
    ]
    return subprocess.run(command).returncode
