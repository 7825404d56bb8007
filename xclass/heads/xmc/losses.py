"""XMC objectives on label-sharded scores (pure tensor math; collectives only via ``group``).

Shapes, as in :mod:`xclass.losses.objectives`: ``logits [B, R]`` fp32 scores of the *global*
batch (replicated rows) against this rank's ``R`` label columns (sharded); ``pos_col [B, K]``
the local column of each positive label of row i, or -1 when that label lives on another rank
or the slot is padding; ``valid [B, K]`` bool (replicated): slot holds a real positive label
(on any rank). Both return the per-row loss ``[B]`` (fp32, replicated; 0 for rows without
labels). Backward needs no communication: each rank gets the gradient of its own columns.
Labels of a row must be unique (the heads de-duplicate them).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from xclass.parallel.collectives import all_reduce


def _pos_cells(pos_col: torch.Tensor):
    """(has [B, K]: the slot is a positive stored on this rank, its column [B, K] with 0 in the
    other slots). Fixed shapes: no boolean-mask indexing, so no host sync."""
    has = pos_col >= 0
    return has, pos_col.clamp(min=0)


def _get_cells(z: torch.Tensor, has: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """[B, K]: z[i, col[i, k]] where has[i, k], else 0."""
    if z.shape[1] == 0:  # no label columns on this rank: no positive either
        return torch.zeros(has.shape, dtype=z.dtype, device=z.device)
    return torch.where(has, z.gather(1, col), torch.zeros((), dtype=z.dtype, device=z.device))


def _set_cells(x: torch.Tensor, has: torch.Tensor, col: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """x[i, col[i, k]] = val[i, k] where has[i, k], in place, fixed shapes. The other slots write
    the same value as the row's first positive (or x[i, 0] back when the row has none), so every
    write to one cell carries one value and the result does not depend on the write order."""
    if has.shape[1] == 0 or x.shape[1] == 0:  # nothing stored here
        return x
    first = has.to(torch.uint8).argmax(1, keepdim=True)
    row_has = has.any(1, keepdim=True)
    dummy_col = torch.where(row_has, col.gather(1, first), torch.zeros_like(first))
    dummy_val = torch.where(row_has, val.gather(1, first), x[:, :1])
    return x.scatter_(1, torch.where(has, col, dummy_col), torch.where(has, val, dummy_val))


class _DecoupledSoftmax(torch.autograd.Function):
    """DEXML decoupled softmax. For each positive (i, l):
    ``loss_il = log(exp(s_il) + sum_{j not in P_i} exp(s_ij)) - s_il`` and the row loss is the
    mean over the row's positives. 2 collectives of O(B K): MAX of the negatives' row max,
    SUM of [negative sum-exp, positive scores]. One [B, R] buffer (exp of the negatives) is
    kept and reused as the gradient."""

    @staticmethod
    def forward(ctx, logits, pos_col, valid, group: Any, inplace: bool):  # type: ignore[override]
        z = logits.detach() if inplace else logits.detach().clone()
        B, K = pos_col.shape
        has, c = _pos_cells(pos_col)
        s_loc = _get_cells(z, has, c)
        if z.shape[1]:  # every positive leaves every denominator (amin with +inf: other cells kept)
            inf = torch.full((), float("inf"), dtype=z.dtype, device=z.device)
            z.scatter_reduce_(1, c, torch.where(has, -inf, inf), "amin")
        m_loc = z.amax(1) if z.shape[1] else torch.full((B,), float("-inf"), device=z.device)
        m = all_reduce(m_loc, "max", group)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # no negatives at all: any shift
        e = z.sub_(m.unsqueeze(1)).exp_()  # masked cells -> 0
        stats = all_reduce(torch.cat([e.sum(1, keepdim=True), s_loc], 1), "sum", group)
        neg_lse = m + stats[:, 0].log()  # -inf when the row has no negative label
        s_pos = stats[:, 1:]
        lse = torch.logaddexp(neg_lse.unsqueeze(1), s_pos)
        npos = valid.sum(1).clamp(min=1).to(z.dtype)
        per = torch.where(valid, lse - s_pos, torch.zeros_like(lse))
        ctx.save_for_backward(e, m, lse, s_pos, pos_col, valid, npos, torch.isfinite(neg_lse))
        return per.sum(1) / npos

    @staticmethod
    def backward(ctx, g_row):  # type: ignore[override]
        e, m, lse, s_pos, pos_col, valid, npos, has_neg = ctx.saved_tensors
        c = g_row / npos  # d loss / d loss_il for every positive of row i
        # negative j of row i: sum_l c_i exp(s_ij - lse_il) = e_ij * sum_l c_i exp(m_i - lse_il)
        w = torch.where(valid & has_neg.unsqueeze(1), torch.exp(m.unsqueeze(1) - lse), torch.zeros_like(lse))
        grad = e.mul_((c * w.sum(1)).unsqueeze(1))  # backward runs once: reuse the buffer
        has, col = _pos_cells(pos_col)
        # positive l of row i (absent from the other positives' denominators): c_i (p_il - 1)
        gp = c.unsqueeze(1) * (torch.exp(s_pos - lse) - 1.0)
        _set_cells(grad, has, col, gp)
        return grad, None, None, None, None


def decoupled_softmax(logits: torch.Tensor, pos_col: torch.Tensor, valid: torch.Tensor, *,
                      group: Optional[Any] = None, inplace: bool = False) -> torch.Tensor:
    """Per-row decoupled-softmax loss [B] (replicated), see :class:`_DecoupledSoftmax`.
    ``inplace``: ``logits`` is a temporary the caller never reads again (its buffer is reused)."""
    if logits.dtype != torch.float32:
        raise TypeError(f"decoupled_softmax expects fp32 logits, got {logits.dtype}")
    return _DecoupledSoftmax.apply(logits, pos_col, valid, group, bool(inplace))


class _ShardedBCE(torch.autograd.Function):
    """One-vs-all binary cross-entropy summed over all labels (Renee-style: the gradient is
    written in place as ``sigmoid(z)`` then fixed at the positives, no autograd graph over L):
    ``row_i = sum_l softplus(z_il) + sum_{l in P_i} [w softplus(-z_il) - softplus(z_il)]``
    (``w`` = pos_weight; w = 1 is plain BCE). One SUM all-reduce of [B]."""

    @staticmethod
    def forward(ctx, logits, pos_col, pos_weight: float, group: Any, inplace: bool):  # type: ignore[override]
        z = logits.detach()
        has, c = _pos_cells(pos_col)
        zp = _get_cells(z, has, c)
        fix = torch.where(has, pos_weight * F.softplus(-zp) - F.softplus(zp), torch.zeros_like(zp)).sum(1)
        row = all_reduce(F.softplus(z).sum(1) + fix, "sum", group)
        ctx.save_for_backward(z, pos_col)
        ctx.pos_weight, ctx.inplace = pos_weight, inplace
        return row

    @staticmethod
    def backward(ctx, g_row):  # type: ignore[override]
        z, pos_col = ctx.saved_tensors
        has, c = _pos_cells(pos_col)
        zp = _get_cells(z, has, c)
        grad = torch.sigmoid_(z) if ctx.inplace else torch.sigmoid(z)
        grad.mul_(g_row.unsqueeze(1))
        # positive cell: sigmoid(z) + d/dz [w softplus(-z) - softplus(z)] = w (sigmoid(z) - 1)
        _set_cells(grad, has, c, g_row.unsqueeze(1) * ctx.pos_weight * (torch.sigmoid(zp) - 1.0))
        return grad, None, None, None, None


def ova_bce(logits: torch.Tensor, pos_col: torch.Tensor, *, pos_weight: float = 1.0,
            group: Optional[Any] = None, inplace: bool = False) -> torch.Tensor:
    """Per-row one-vs-all BCE [B] summed over every label of every shard (replicated)."""
    if logits.dtype != torch.float32:
        raise TypeError(f"ova_bce expects fp32 logits, got {logits.dtype}")
    return _ShardedBCE.apply(logits, pos_col, float(pos_weight), group, bool(inplace))
