"""Gradient-norm clipping with the same rule for the encoder and the head.

Each part is clipped by its own global norm with the same threshold: the encoder's
gradients are replicated after averaging (its norm is local), the head's are sharded
over classes (its squared norm is summed over ranks) except for parameters the head lists
in ``replicated_parameters()`` (counted once). Partial-FC heads keep only the sampled rows in
autograd (``head.active``): those are what is clipped. DeepSpeed clips the encoder itself
(``gradient_clipping``), so the DeepSpeed path only clips the head here, with the same rule.
"""
from __future__ import annotations

from typing import Any, List

import torch

from xclass.parallel import ParallelContext
from xclass.parallel.collectives import sharded_sq_norm


def _sq_norm(params: List[torch.Tensor], device: torch.device) -> torch.Tensor:
    """0-dim float64 sum of squared gradients on ``device`` (zero when no gradient)."""
    for p in params:  # coalesce once: duplicate rows would otherwise be squared separately
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [_dense_part(p.grad).detach().float() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    return sum((g * g).sum().double() for g in grads)  # type: ignore[return-value]


def _dense_part(g: torch.Tensor) -> torch.Tensor:
    """The values of a (coalesced) sparse gradient, an embedding table's touched rows; else the
    gradient itself."""
    return g.values() if g.is_sparse else g


def _scale(params: List[torch.Tensor], sq: torch.Tensor, max_norm: float) -> None:
    """Scale gradients by max_norm / (norm + 1e-6) when the norm exceeds ``max_norm`` and is finite:
    a device-side factor (1 otherwise), so no host sync."""
    if max_norm <= 0:
        return
    norm = sq.sqrt()
    c = torch.where(torch.isfinite(norm) & (norm > max_norm), max_norm / (norm + 1e-6),
                    torch.ones_like(norm))
    for p in params:
        if p.grad is not None:
            p.grad.mul_(c.to(p.grad.dtype))


def clip_gradients(s: Any, max_norm: float, ctx: ParallelContext) -> torch.Tensor:
    """Clip encoder and head gradients (each to ``max_norm``); return the total norm
    before clipping, sqrt(|g_enc|^2 + |g_head|^2): a 0-dim float64 tensor on the run's device,
    replicated on every rank (read it on log steps only: reading it is a host sync)."""
    sync = getattr(s.head_opt, "sync_grads", None)
    if sync is not None:  # replicated head parts (an XMC label tower) hold partial sums until then
        sync()
    dev = getattr(s, "device", None) or ctx.device
    head_params = [p for p in s.head.parameters() if p.requires_grad]
    rep = {id(p) for p in getattr(s.head, "replicated_parameters", lambda: [])()}
    sharded = [p for p in head_params if id(p) not in rep]
    active = getattr(s.head, "active", None)  # Partial FC: the sampled rows are the autograd leaf
    if active is not None and active[1].grad is not None:
        sharded.append(active[1])
    replicated = [p for p in head_params if id(p) in rep]
    enc_params = [p for p in s.engine.module.parameters() if p.requires_grad]
    local_sq = _sq_norm(sharded, dev)
    applied = getattr(s.head_opt, "backward_sq_norm", lambda: None)()  # a step already taken in the backward
    if applied is not None:  # (head.params.update_in_backward; no clipping there, its norm is reported)
        local_sq = local_sq + applied
    head_sq = sharded_sq_norm(local_sq, ctx.group) + _sq_norm(replicated, dev)
    enc_sq = _sq_norm(enc_params, dev) if not s.uses_deepspeed else torch.zeros_like(head_sq)
    _scale(sharded + replicated, head_sq, max_norm)
    if not s.uses_deepspeed:
        _scale(enc_params, enc_sq, max_norm)
    return (head_sq + enc_sq).sqrt()
