"""Multi-process training support on ``torch.distributed`` (launched by ``torchrun``).

Data parallelism: every process (rank) holds a full copy of the model, trains on
its own shard of each global batch, and ``DistributedDataParallel`` averages the
gradients. Validation predictions are gathered from all ranks so the AUC is
computed on the whole validation split (an AUC is not an average of per-rank
AUCs). Backend: gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> DistContext:
    """The current process group's rank and size (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device, group_of_one: bool = False) -> DistContext:
    """Join the process group ``torchrun`` set up (env:// rendezvous), if any.

    With ``group_of_one`` a process not started by ``torchrun`` forms a group of
    its own (rank 0 of 1, an in-memory store): what TorchRec's sharding needs to
    run in a single process.
    """
    if dist.is_initialized():
        return context()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if launched_by_torchrun():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    elif group_of_one:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return context()


def shutdown() -> None:
    """Leave the process group: wait for every rank, then destroy the group.

    Call it on every rank once training succeeded. A rank that exits while the
    others still talk to it tears down gloo's communication threads under them
    (an abort, "terminate called without an active exception", seen in CI);
    after the barrier no rank is mid-collective. No-op without a group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def agree(ok: bool, ctx: DistContext) -> bool:
    """True on every rank if ``ok`` is true on every rank (one all-reduce; no-op in one process)."""
    if not ctx.distributed:
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0


def device_for_rank(device: torch.device) -> torch.device:
    """On GPU, each local rank uses its own device."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def gather_strided(local: torch.Tensor, total: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble a tensor whose rank ``r`` holds rows ``r, r + W, r + 2W, ...`` (``[n, ...]``).

    Every rank receives the full ``[total, ...]`` tensor in row order.
    """
    if not ctx.distributed:
        return local
    width = -(-total // ctx.world_size)  # ceil
    padded = torch.zeros(width, *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    full = torch.empty(total, *local.shape[1:], dtype=local.dtype, device=local.device)
    for rank, part in enumerate(parts):
        count = len(range(rank, total, ctx.world_size))
        full[rank :: ctx.world_size] = part[:count]
    return full


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
