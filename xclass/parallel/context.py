"""ParallelContext: rank, world size, the process group and the run's device, passed explicitly.

World size 1 needs no process group (``group=None``): every collective helper in
``xclass.parallel.collectives`` is then the identity. ``device`` is the one device of this
process (see :mod:`xclass.parallel.device`): library code creates its tensors there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.distributed as dist

CPU = torch.device("cpu")


@dataclass(frozen=True)
class ParallelContext:
    """Who this process is. ``group`` is None when world_size == 1 and no group exists;
    ``device`` is where this rank's model, optimizer state and batches live."""

    rank: int = 0
    world_size: int = 1
    group: Optional[Any] = None
    local_rank: int = 0
    device: torch.device = CPU

    @classmethod
    def single(cls, device: Any = CPU) -> "ParallelContext":
        """One process, no process group."""
        return cls(device=torch.device(device))

    @classmethod
    def from_env(cls, group: Any = None, device: Any = CPU) -> "ParallelContext":
        """Take rank/world size from an initialised default group, else from env, else single."""
        if dist.is_available() and dist.is_initialized():
            g = group if group is not None else dist.group.WORLD
            if dist.get_world_size(g) > 1:
                from xclass.parallel.collectives import host_group

                host_group(g)  # the gloo twin of an NCCL group, made while every rank is here
            return cls(
                rank=dist.get_rank(g),
                world_size=dist.get_world_size(g),
                group=g,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                device=torch.device(device),
            )
        return cls.single(device)

    def with_device(self, device: Any) -> "ParallelContext":
        """The same rank on ``device``."""
        return replace(self, device=torch.device(device))

    @property
    def is_main(self) -> bool:
        """True on rank 0: the only rank that prints progress and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def distributed_ready() -> bool:
    """True when a default torch.distributed process group exists."""
    return dist.is_available() and dist.is_initialized()
