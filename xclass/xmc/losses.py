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
    """(row index, column) of the positives stored on this rank."""
    has = pos_col >= 0
    rows = torch.arange(pos_col.shape[0], device=pos_col.device).unsqueeze(1).expand_as(pos_col)
    return has, rows[has], pos_col[has]


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
        has, r, c = _pos_cells(pos_col)
        s_loc = torch.zeros(B, K, dtype=z.dtype, device=z.device)
        s_loc[has] = z[r, c]
        z[r, c] = float("-inf")  # every positive leaves every denominator
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
        has, r, col = _pos_cells(pos_col)
        # positive l of row i (absent from the other positives' denominators): c_i (p_il - 1)
        gp = c.unsqueeze(1) * (torch.exp(s_pos - lse) - 1.0)
        grad[r, col] = gp[has]
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
        has, r, c = _pos_cells(pos_col)
        zp = z[r, c]
        fix = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        fix.index_add_(0, r, pos_weight * F.softplus(-zp) - F.softplus(zp))
        row = all_reduce(F.softplus(z).sum(1) + fix, "sum", group)
        ctx.save_for_backward(z, pos_col)
        ctx.pos_weight, ctx.inplace = pos_weight, inplace
        return row

    @staticmethod
    def backward(ctx, g_row):  # type: ignore[override]
        z, pos_col = ctx.saved_tensors
        has, r, c = _pos_cells(pos_col)
        zp = z[r, c]
        grad = torch.sigmoid_(z) if ctx.inplace else torch.sigmoid(z)
        grad.mul_(g_row.unsqueeze(1))
        # positive cell: sigmoid(z) + d/dz [w softplus(-z) - softplus(z)] = w (sigmoid(z) - 1)
        grad[r, c] = g_row[r] * ctx.pos_weight * (torch.sigmoid(zp) - 1.0)
        return grad, None, None, None, None


def ova_bce(logits: torch.Tensor, pos_col: torch.Tensor, *, pos_weight: float = 1.0,
            group: Optional[Any] = None, inplace: bool = False) -> torch.Tensor:
    """Per-row one-vs-all BCE [B] summed over every label of every shard (replicated)."""
    if logits.dtype != torch.float32:
        raise TypeError(f"ova_bce expects fp32 logits, got {logits.dtype}")
    return _ShardedBCE.apply(logits, pos_col, float(pos_weight), group, bool(inplace))
