"""The run's device, decided once per process.

``cluster.use_gpu`` (``xclass train --gpu``) asks for ``cuda:LOCAL_RANK``; otherwise the run is on
the CPU. Asking for a GPU where CUDA is unavailable is a configuration error unless
``cluster.allow_cpu_fallback`` is true (then the run trains on the CPU with a warning). The
chosen device is made current (``torch.cuda.set_device``) before any model or process group is
built, and carried on :class:`~xclass.parallel.context.ParallelContext` from then on: library
code never picks a device itself, it follows its inputs or ``ctx.device``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from xclass.config_types import ConfigError

log = logging.getLogger("xclass")


def resolve_device(use_gpu: bool, local_rank: int = 0, allow_cpu_fallback: bool = False) -> torch.device:
    """``cuda:local_rank`` (made current) when ``use_gpu`` and CUDA has that device, else cpu.

    Raises ConfigError when a GPU is asked for and missing, unless ``allow_cpu_fallback``.
    """
    if not use_gpu:
        return torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank < n:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        return dev
    why = (f"cluster.use_gpu=true (--gpu) but CUDA is not available to torch {torch.__version__}"
           if n == 0 else f"cluster.use_gpu=true but local rank {local_rank} has no GPU ({n} visible)")
    if allow_cpu_fallback:
        log.warning(f"{why}; training on the CPU (cluster.allow_cpu_fallback=true)")
        return torch.device("cpu")
    raise ConfigError(f"{why}; install a CUDA build of torch, drop --gpu, or set cluster.allow_cpu_fallback=true")


def backend_for(device: Any) -> str:
    """The torch.distributed backend for tensors on ``device``: nccl for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def run_device(cfg: Any, local_rank: int = 0) -> torch.device:
    """The device of a training process of ``cfg`` (``cluster.use_gpu``, ``cluster.allow_cpu_fallback``)."""
    return resolve_device(bool(cfg.cluster.use_gpu), local_rank,
                          bool(getattr(cfg.cluster, "allow_cpu_fallback", False)))


def check_on_device(ok: torch.Tensor, message: Callable[[], str], static: str) -> None:
    """Input check without a host sync on an accelerator: ``ok`` is a 0-dim bool tensor.

    On the CPU (a free host read) a failed check raises ValueError(``message()``), which may
    name the offending value. On CUDA it is ``torch._assert_async(ok, static)``: the step is not
    stalled; a failure surfaces as a device-side assertion at the next synchronisation.
    """
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message())
        return
    torch._assert_async(ok, static)
