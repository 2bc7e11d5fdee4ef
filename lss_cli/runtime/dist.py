"""torch.distributed for `torchrun`: one process per GPU (NCCL) or per CPU worker (gloo).

A single-process run (no RANK/WORLD_SIZE in the environment) creates no process group at all, so
every helper here is a no-op without one; `is_distributed()` is the one test of that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """True inside an initialised process group (torch builds without distributed support have none)."""
    return dist.is_available() and dist.is_initialized()


# A CPU (gloo) group for small host-side votes beside an NCCL default group; None = the default
# group (already gloo on CPU). Set by init_distributed.
_host_group = None
# Whether init_distributed created the process group: cleanup() destroys only that one, so a
# caller's own group (lss_cli.api inside a user's DDP program) outlives our functions.
_owns_group = False


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the process group when launched by torchrun; otherwise a no-op."""
    global _host_group, _owns_group
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        _owns_group = True
        _host_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    return info


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank (every rank calls this at the same point; no-op without a
    process group). Host to host over gloo: it waits for the other ranks, never for the GPU."""
    if not is_distributed():
        return flag
    vote = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_host_group)
    return bool(vote.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (no-op without a process group); no host sync."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def cleanup() -> None:
    """Destroy the process group init_distributed created (none, or a caller's own: left alone)."""
    global _host_group, _owns_group
    if _owns_group and is_distributed():
        dist.destroy_process_group()  # (every group, the host group included)
    _host_group, _owns_group = None, False
