"""``head.params.update_in_backward``: the fused head applies the optimizer step (SGD with or
without momentum, or AdamW) to each class chunk in its backward, so the weight gradient
[C_local K, d] never exists whole.

The step is the head optimizer's own (``ShardedHeadOptimizer._sgd`` / ``_adamw`` on row slices of
the weight and of its state; both act row by row), with the learning rate the optimizer holds
when the backward runs (the training loop sets it before the backward in this mode). That is exact only where the
normal step would see exactly this gradient, once, unchanged; so the mode refuses, naming the key:

- ``head.params.impl: materialized`` (it would never apply);
- ``head.sample_rate < 1`` (Partial FC updates sampled rows through their own leaf);
- ``train.grad_accum > 1`` (the step must wait for the last micro-batch);
- ``optim.grad_clip > 0`` (clipping scales the gradient by a norm known only after every chunk).

Non-finite steps: the normal optimizer skips a step when any head gradient is inf/NaN on any
rank. Here the chunk gradients follow from the step's embeddings, upstream gradient, log-sum-exp
and target-row gradients; the backward checks those (one 1-element MAX all-reduce over the head
group) and, when one is not finite, leaves every row and momentum untouched (``_sgd``'s flag).
A step skipped only because the ENCODER's gradient was not finite still updates the head (its
update happened before the encoder's gradient existed); the head's grad-norm contribution is
summed chunk by chunk and reported (``backward_sq_norm``).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from xclass.config_types import ConfigError
from xclass.parallel.collectives import all_reduce

KEY = "head.params.update_in_backward"


def check_flag(value: Any, sample_rate: float, impl: str = "fused") -> bool:
    """The validated flag; ConfigError naming the key for a non-bool, with Partial FC, or with
    ``impl: materialized`` (where it would never apply; under ``auto`` it applies whenever the
    fused path runs, and the normal step otherwise)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{KEY} must be true or false, got {value!r}")
    if value and impl == "materialized":
        raise ConfigError(f"{KEY}: needs head.params.impl = fused (or auto), got 'materialized'")
    if value and sample_rate < 1.0:
        raise ConfigError(f"{KEY}: needs head.sample_rate = 1 (Partial FC updates its sampled rows "
                          f"in the optimizer step), got {sample_rate}")
    return value


def check_optimizer(opt: Any) -> None:
    """ConfigError unless the head optimizer has a row-wise step (ShardedHeadOptimizer: sgd or adamw)."""
    if getattr(opt, "name", None) not in ("sgd", "adamw") or not hasattr(opt, "step_rows"):
        raise ConfigError(f"{KEY}: needs the sharded head optimizer with optim.name sgd or adamw, "
                          f"got {getattr(opt, 'name', None)!r}")


def check_run(cfg: Any) -> None:
    """ConfigError for run settings under which an update in the backward is not the normal step."""
    if int(cfg.train.grad_accum) > 1:
        raise ConfigError(f"{KEY}: needs train.grad_accum = 1 (the step must wait for the last "
                          f"micro-batch), got {cfg.train.grad_accum}")
    if float(cfg.optim.grad_clip) > 0:
        raise ConfigError(f"{KEY}: needs optim.grad_clip = 0 (clipping needs the whole gradient's "
                          f"norm before any row is updated), got {cfg.optim.grad_clip}")


def nonfinite_flag(tensors: Any, group: Any, device: torch.device) -> torch.Tensor:
    """0-dim float32 flag, 1 when any of ``tensors`` has an inf/NaN on any rank of ``group`` (one
    1-element MAX all-reduce; no host read)."""
    bad = torch.zeros(1, device=device)
    for t in tensors:
        if t is not None and t.numel():
            bad = torch.maximum(bad, (~torch.isfinite(t.sum())).to(torch.float32).reshape(1))
    return all_reduce(bad, "max", group).reshape(())


class ChunkUpdate:
    """Sink of the chunked backward: ``sink(lo, hi, grad)`` adds the target rows' margin gradient
    ``gwt`` [B K, d] (rows ``rows`` [B K] of the shard) that fall in [lo, hi) to grad [hi - lo, d]
    and applies the optimizer's step to weight rows [lo, hi) and their state rows.

    The target rows are added with one ``index_add_`` per chunk over all B K rows, the ones outside
    the chunk contributing exact zeros to a clamped row: no data-dependent shapes, no host read,
    and the same sums in the same order as the normal path's single ``index_add_``."""

    def __init__(self, opt: Any, rows: torch.Tensor, gwt: Optional[torch.Tensor], inf: torch.Tensor) -> None:
        self.opt, self.inf = opt, inf
        self.rows, self.gwt = (rows, gwt) if gwt is not None and rows.numel() else (None, None)
        self.sq = torch.zeros((), dtype=torch.float64, device=inf.device)

    @torch.no_grad()
    def __call__(self, lo: int, hi: int, grad: torch.Tensor) -> None:
        if self.rows is not None:
            loc = self.rows - lo
            inside = (loc >= 0) & (loc < hi - lo)
            add = torch.where(inside.unsqueeze(1), self.gwt.to(grad.dtype), torch.zeros((), device=grad.device))
            grad.index_add_(0, loc.clamp(0, hi - lo - 1), add)
        flat = grad.reshape(-1)
        self.sq += torch.dot(flat, flat).double()
        self.opt.step_rows(lo, hi, grad, self.inf)


def optimizer_of(head: Any) -> Any:
    """The optimizer whose step the fused backward applies, or None (the flag is off, or no
    gradient will be taken). RuntimeError when the flag is on and no optimizer was made."""
    if not getattr(head, "update_in_backward", False) or not torch.is_grad_enabled() \
            or not head.weight.requires_grad:
        return None
    opt = getattr(head, "inline_optimizer", None)
    if opt is None:
        raise RuntimeError(f"{KEY}: make the head's optimizer (head.make_optimizer) before a training forward")
    return opt
