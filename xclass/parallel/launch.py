"""Process-group set-up helpers shared by torchrun, Ray workers and tests."""
from __future__ import annotations

import os
import socket
import sys

import torch.distributed as dist


def free_port() -> int:
    """An OS-assigned free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_gloo(rank: int, world_size: int, port: int, addr: str = "127.0.0.1") -> None:
    """Initialise the default gloo group via TCP on ``addr:port``."""
    os.environ.setdefault("MASTER_ADDR", addr)
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        "gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world_size
    )


def clean_exit(code: int = 0, destroy: bool = True) -> None:
    """Destroy the group, flush, and leave without interpreter teardown (gloo aborts
    randomly at exit otherwise)."""
    if destroy and dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
