"""The head contract shared by every classifier head (margin heads, Z-loss, XMC heads).

A head is an ``nn.Module`` built by a registered factory::

    head = HEADS.get(cfg.head.name)(cfg.head, num_classes=C, embedding_dim=d, ctx=ctx, seed=s)
    out = head(emb, labels)          # emb [B_local, d] sharded over the batch; labels [B_local]
    out.loss.backward()              # or engine.backward(out.loss)
    opt = head.make_optimizer(cfg.optim)   # HeadOptimizer: step(), zero_grad(), state_dict()

Gradient-scale convention (every head follows it; tests check it): ``out.loss`` is the
mean over the *global* batch (replicated on every rank). The gradient a head sends back
into ``emb`` is ``world_size * d loss / d emb_local`` so that the data-parallel *average*
of encoder gradients (DDP, DeepSpeed) equals the single-process gradient on the
concatenated batch. Head weight gradients are exact ``d loss / d W_local`` and are never
averaged across ranks: heads stay out of data-parallel engines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Protocol

import torch

from xclass.registry import Registry

IGNORE_INDEX = -100

HEADS: Registry = Registry("head")


@dataclass
class HeadOutput:
    """loss: scalar, mean over the global batch, replicated. metrics: detached scalars."""

    loss: torch.Tensor
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)


class HeadOptimizer(Protocol):
    def step(self) -> None: ...
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class Head(Protocol):
    num_classes: int

    def __call__(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput: ...

    def make_optimizer(self, optim_cfg: Any) -> HeadOptimizer: ...

    def local_weight(self) -> "tuple[torch.Tensor, int]":
        """This rank's class vectors [C_local, d] (materialised) and its first global class id."""
        ...

    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        """Raw scores [B, C_local] of (replicated) embeddings against this rank's classes."""
        ...


def torch_optimizer(params: Any, optim_cfg: Any, lr: float) -> torch.optim.Optimizer:
    """torch SGD (momentum, L2 weight decay), Adam or AdamW (decoupled decay) from the optim
    config's name, momentum, weight_decay and optional betas; the one builder for the encoder
    engine and the dense heads."""
    name = str(getattr(optim_cfg, "name", "sgd")).lower()
    wd = float(getattr(optim_cfg, "weight_decay", 0.0) or 0.0)
    betas = tuple(getattr(optim_cfg, "betas", (0.9, 0.999)) or (0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(getattr(optim_cfg, "momentum", 0.0) or 0.0),
                               weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)
    raise ValueError(f"unknown optim.name {name!r} (sgd, adam, adamw)")


class TorchHeadOptimizer:
    """A torch optimizer over a head's (non-sharded-sparse) parameters, with a settable ``lr``
    for the loop's schedule; ``step()`` returns True (it never skips)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = float(value)

    def step(self) -> bool:
        self.opt.step()
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


def set_lr(opt: Any, lr: float) -> None:
    """Set the learning rate of a torch optimizer or a head optimizer exposing ``lr``."""
    if hasattr(opt, "param_groups"):
        for g in opt.param_groups:
            g["lr"] = lr
    else:
        opt.lr = lr


def head_lr(optim_cfg: Any) -> float:
    """Learning rate for the head: optim.head_lr when set, else optim.lr."""
    hl: Optional[float] = getattr(optim_cfg, "head_lr", None)
    return float(hl if hl is not None else optim_cfg.lr)


def host_step(module: Any, name: str = "step_count") -> int:
    """A 0-dim int64 counter buffer (``step_count``, on the run's device) as a Python int, without
    a device read in a steady step: the value is cached on the host and re-read only when the
    buffer was changed by something else (a load_state_dict, a move), detected by its version."""
    buf = getattr(module, name)
    key = "_host_" + name
    cached = module.__dict__.get(key)
    if cached is None or cached[0] is not buf or cached[1] != buf._version:
        cached = (buf, buf._version, int(buf))  # host read: after construction or a load only
        module.__dict__[key] = cached
    return cached[2]


def advance_step(module: Any, name: str = "step_count") -> None:
    """``module.<name> += 1`` on the device and in the host cache (no sync)."""
    n = host_step(module, name)
    buf = getattr(module, name)
    buf.add_(1)
    module.__dict__["_host_" + name] = (buf, buf._version, n + 1)
