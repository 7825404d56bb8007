"""Pieces shared by the dense and the factored Z-loss heads: class split, labels, init,
hyper-parameters and the two small autograd helpers of the sharded path."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from xclass.parallel import collectives as coll
from xclass.parallel.device import check_on_device
from xclass.heads.partition import class_range  # noqa: F401  (re-exported for the zloss heads)
from xclass.heads.zloss.losses import SPHERICAL_LOSSES
from xclass.registry import UnknownNameError


@dataclass
class ZParams:
    """head_cfg.params of both Z-loss heads.

    loss: spherical loss name (zloss | squared | log_spherical | log_taylor); loss_params: its
    keyword hyper-parameters (zloss: a, b; log_spherical: eps), also accepted at top level.
    bias_feature: constant appended to every embedding in place of a per-class bias (0: none).
    init_std: std of the initial W (columns centred over all classes). dtype of the big
    matrix (float32 | float64). Factored head only: stabilize_period (singular-value check
    of U every N updates), sv_band (allowed singular values of U), guard_tau (dense fallback
    when min |eig(C)| < tau), resync_on_save (recompute Q, w_bar in state_dict()).
    """

    loss: str = "zloss"
    loss_params: Dict[str, Any] = field(default_factory=dict)
    bias_feature: float = 1.0
    init_std: float = 0.01
    center_init: bool = True
    dtype: str = "float32"
    stabilize_period: int = 10
    sv_band: Tuple[float, float] = (0.5, 2.0)
    guard_tau: float = 1e-2
    resync_on_save: bool = True

    @classmethod
    def parse(cls, params: Optional[Dict[str, Any]]) -> "ZParams":
        p = dict(params or {})
        known = set(cls.__dataclass_fields__)
        lp = dict(p.pop("loss_params", {}) or {})
        for key in ("a", "b", "eps", "rel_tiny"):
            if key in p:
                lp[key] = p.pop(key)
        bad = sorted(set(p) - known)
        if bad:
            raise UnknownNameError(f"head.params: unknown key(s) {bad}; known: {sorted(known | {'a', 'b', 'eps'})}")
        out = cls(loss_params=lp, **p)
        SPHERICAL_LOSSES.get(out.loss)  # unknown loss names fail here, listing the known ones
        if out.dtype not in ("float32", "float64"):
            raise ValueError(f"head.params.dtype must be float32 or float64, got {out.dtype!r}")
        out.sv_band = tuple(out.sv_band)  # type: ignore[assignment]
        return out

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32


def split_labels(labels: torch.Tensor, num_classes: int, start: int, end: int
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels [m] or [m, K] int64 (negative = padding / ignore) ->
    (mask [m, K] real positives, local_idx [m, K] valid row ids of this shard (0 where not
    local), local [m, K] bool: positive whose class lives on this shard)."""
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    lab = labels.long()
    if lab.dim() == 1:
        lab = lab[:, None]
    if lab.dim() != 2:
        raise ValueError(f"labels must be [B] or [B, K], got shape {tuple(labels.shape)}")
    mask = lab >= 0
    check_on_device((lab < num_classes).all(),      # a negative label is padding, never too large
                    lambda: f"label >= num_classes ({num_classes}): max {int(lab.max())}",
                    f"zloss: a label >= num_classes ({num_classes})")
    local = (lab >= start) & (lab < end)            # start >= 0: implies mask
    idx = (lab - start) * local                     # 0 where not local (exact integer product)
    return mask, idx, local


def init_rows(num_classes: int, dim: int, start: int, end: int, p: ZParams, seed: int,
              group: Any, block: int = 65536) -> torch.Tensor:
    """Rows [start, end) of the initial W [C, dim] in ``p.dtype``, identical for any class
    split: block b of rows is drawn (float64) from a generator seeded by (seed, b). Columns
    are centred over all C classes (w_bar ~ 0 avoids the cancellation in sigma^2; docs/zloss.md, note 5).
    Peak extra memory O(block * dim)."""
    # host generator, device-independent values; moved with the module
    out = torch.empty(end - start, dim, dtype=p.torch_dtype, device="cpu")
    colsum = torch.zeros(dim, dtype=torch.float64, device="cpu")
    for b in range(start // block, (end + block - 1) // block):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + b)
        rows = torch.randn(block, dim, generator=g, dtype=torch.float64, device="cpu") * p.init_std
        lo, hi = max(start, b * block), min(end, (b + 1) * block)
        part = rows[lo - b * block:hi - b * block]
        colsum += part.sum(0)
        out[lo - start:hi - start] = part.to(out.dtype)
    if p.center_init:
        out -= (coll.all_reduce(colsum, "sum", group) / num_classes).to(out.dtype)
    return out


def append_bias(h: torch.Tensor, bias_feature: float) -> torch.Tensor:
    """[m, d] -> [m, d + 1] with the constant column, or unchanged when bias_feature == 0."""
    if bias_feature == 0:
        return h
    return torch.cat([h, h.new_full((h.shape[0], 1), bias_feature)], 1)


def gather_embeddings(emb: torch.Tensor, group: Any) -> torch.Tensor:
    """emb [B_local, d] -> [B_global, d] replicated. The gradient reaching emb is
    world_size * dL/d emb_local (gradient-scale convention of xclass.heads.base)."""
    return coll.gather_global_batch(emb, group)


class _SumShards(torch.autograd.Function):
    """Forward: all-reduce SUM of per-shard partial statistics. Backward: identity, because
    the loss built on the sum is computed identically on every rank (replicated), so each
    rank already holds dL/d(sum) = dL/d(own partial)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        return coll.all_reduce(x, "sum", group).clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


def sum_shards(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Autograd-aware SUM over class shards; identity for one process."""
    return x if coll.world_size(group) == 1 else _SumShards.apply(x, group)


def gather_labels(labels: torch.Tensor, group: Any) -> torch.Tensor:
    """Labels [B_local(, K)] -> [B_global(, K)] replicated."""
    return coll.all_gather_nograd(labels.contiguous(), group)
