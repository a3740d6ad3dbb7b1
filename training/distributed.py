"""Data-parallel training: one process per device (torchrun, or `launch`), DistributedDataParallel.

How the trainer uses it (training/trainer.py):
- Every rank forms the same global batches in the same order (same seed), each of
  batch_size x world users; rank r trains rows r, r + world, ... of each (users sharded by rank).
- Every rank runs the same number of blocks per batch (as many as the longest user of the global
  batch needs), so DDP's gradient all-reduces pair up; a rank whose users have all ended keeps one
  row whose targets are padding (no loss).
- A rank's loss is its summed cross-entropy x world / (targets of the global batch in the block):
  DDP averages gradients over ranks, so the step is the one-process step on the union of the shards.
- Rank 0 evaluates and decides early stopping; the decision is broadcast, the time budget is agreed
  with an all-reduce; rank 0 alone writes the checkpoint (training/pipeline.py).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `launch` sets the same for
processes it spawns on this machine (`cmnrec train --nproc N`). Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes."""

    rank: int = 0  # global rank
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine: the CUDA device index it uses

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


SINGLE = Cluster()


def from_environment() -> Cluster:
    """The cluster described by torchrun's environment variables (one process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"WORLD_SIZE={world}, RANK={rank}: not a valid torchrun environment")
    return Cluster(rank=rank, world=world, local_rank=local)


def process_device(cluster: Cluster, device: torch.device) -> torch.device:
    """Each rank of a CUDA job takes the GPU of its local rank; CPU ranks share the CPU."""
    if cluster.parallel and device.type == "cuda":
        return torch.device("cuda", cluster.local_rank)
    return device


def join(cluster: Cluster, device: torch.device) -> bool:
    """Open the process group if it is needed and not open yet. Returns whether this call opened it."""
    if not cluster.parallel or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            rank=cluster.rank, world_size=cluster.world)
    return True


def leave(opened: bool) -> None:
    if opened and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, cluster: Cluster, device: torch.device) -> nn.Module:
    """The model under DistributedDataParallel (itself when there is one process).

    find_unused_parameters: a block without a chunk time leaves the memory's weights unused.
    """
    if not cluster.parallel:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=True)


def unwrap(model: nn.Module) -> Any:
    """The network inside a DDP wrapper (or the network itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _collective_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool, cluster: Cluster, device: torch.device) -> bool:
    """True on every rank when it is true on some rank (one all-reduce)."""
    if not cluster.parallel:
        return flag
    value = torch.tensor([int(flag)], device=_collective_device(device))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(values: list[float], cluster: Cluster, device: torch.device) -> list[float]:
    """Rank 0's values on every rank (one broadcast)."""
    if not cluster.parallel:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
    dist.broadcast(tensor, src=0)
    return [float(v) for v in tensor.tolist()]


def free_port() -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child(index: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "WORLD_SIZE": str(nproc), "RANK": str(index), "LOCAL_RANK": str(index)})
    fn(*args)


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) in nproc fresh processes on this machine as ranks 0..nproc-1 (torchrun's
    environment), and wait for all of them. fn must be importable (a module-level function).
    An exception in a rank is raised here (torch.multiprocessing.ProcessRaisedException)."""
    if nproc < 1:
        raise ValueError(f"nproc: must be >= 1, got {nproc}")
    mp.start_processes(_child, args=(nproc, free_port(), fn, args), nprocs=nproc, join=True,
                       start_method="spawn")
