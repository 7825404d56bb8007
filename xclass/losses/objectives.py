"""Objectives on class-sharded logits. With ``group=None`` they are the dense losses.

Every function takes ``logits [B, C_local]`` (fp32, sharded over classes; B is the global batch,
replicated on all ranks), ``target [B]`` (local column or -1: class on another rank or row
ignored) and ``valid [B]`` (bool, replicated; False for ignored rows), and returns the
per-row loss ``[B]`` (fp32, replicated, 0 on ignored rows). Backward needs no communication:
each rank receives the gradient of its own logits only.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from xclass.parallel.collectives import all_gather_nograd, all_reduce


def _row_max(z: torch.Tensor) -> torch.Tensor:
    """[B] row max of z [B, n]; -inf when the shard has no column (an empty Partial-FC sample)."""
    return z.amax(1) if z.shape[1] else z.new_full((z.shape[0],), float("-inf"))


def _take(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B] entries z[i, idx_i] (idx [B, 1] clamped columns); zeros when z has no column."""
    return z.gather(1, idx).squeeze(1) if z.shape[1] else z.new_zeros(z.shape[0])


class _ShardedSoftmaxCE(torch.autograd.Function):
    """Log-domain cross-entropy over class shards: 2 collectives of O(B) floats
    (MAX of the row max; SUM of [sum-exp, target logit, logit sum] packed into one tensor).

    loss_i = lse_i - (1 - eps) z_{i,y} - (eps / C) sum_j z_ij,  lse = max + log(sum exp(z - max)).
    No probability is ever formed for the loss, so there is no 1e-30 cap (insightface#1437).
    The softmax buffer is reused as the gradient in backward (one [B, C_local] buffer).
    """

    @staticmethod
    def forward(ctx, logits, target, valid, smoothing: float, num_classes: int, group: Any,  # type: ignore[override]
                inplace: bool):
        has = target >= 0
        idx = target.clamp(min=0).unsqueeze(1)
        z = logits.detach()
        row_max = all_reduce(_row_max(z), "max", group)
        z_t = torch.where(has, _take(z, idx), torch.zeros_like(row_max))
        z_sum = z.sum(1) if smoothing > 0 else torch.zeros_like(row_max)
        # inplace: the caller hands over its logits buffer, which becomes exp(z - max) (Megatron-style)
        p = z.sub_(row_max.unsqueeze(1)) if inplace else z - row_max.unsqueeze(1)
        p.exp_()
        stats = all_reduce(torch.stack([p.sum(1), z_t, z_sum]), "sum", group)
        lse = row_max + stats[0].log()
        loss = lse - (1.0 - smoothing) * stats[1] - (smoothing / num_classes) * stats[2]
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        # p stays unnormalised: backward folds 1/sum-exp into its one scaling pass
        ctx.save_for_backward(p, stats[0], idx, has, valid)
        ctx.smoothing, ctx.num_classes = smoothing, num_classes
        return loss

    @staticmethod
    def backward(ctx, g_loss):  # type: ignore[override]
        p, sumexp, idx, has, valid = ctx.saved_tensors
        g_row = torch.where(valid, g_loss, torch.zeros_like(g_loss))
        grad = p  # reused in place: backward runs once (no retain_graph through this op)
        grad.mul_((g_row / sumexp).unsqueeze(1))  # softmax * upstream gradient, one pass
        if ctx.smoothing > 0:
            grad.sub_((g_row * (ctx.smoothing / ctx.num_classes)).unsqueeze(1))
        onehot = torch.where(has, (1.0 - ctx.smoothing) * g_row, torch.zeros_like(g_row))
        if grad.shape[1]:
            grad.scatter_add_(1, idx, -onehot.unsqueeze(1))
        return grad, None, None, None, None, None, None


def softmax_ce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
               group: Optional[Any] = None, label_smoothing: float = 0.0,
               num_classes: Optional[int] = None, inplace: bool = False) -> torch.Tensor:
    """Per-row softmax CE [B] (replicated). ``num_classes``: the GLOBAL class count over which
    label smoothing spreads ``label_smoothing`` (required when smoothing > 0 and sharded).
    ``inplace``: ``logits`` is a temporary the caller will not read again; it is overwritten
    with the softmax numerator instead of allocating another [B, C] buffer."""
    if logits.dtype != torch.float32:
        raise TypeError(f"softmax_ce expects fp32 logits (upcast first), got {logits.dtype}")
    if num_classes is None:
        if group is not None and label_smoothing > 0:
            raise ValueError("softmax_ce: num_classes (global) is required with label smoothing")
        num_classes = logits.shape[1]
    return _ShardedSoftmaxCE.apply(logits, target, valid, float(label_smoothing), int(num_classes), group,
                                   bool(inplace))


class _SumAcross(torch.autograd.Function):
    """Forward: all-reduce SUM of per-shard partial losses. Backward: identity, because each
    rank differentiates the same replicated total with respect to its own partial."""

    @staticmethod
    def forward(ctx, x, group):  # type: ignore[override]
        return all_reduce(x, "sum", group)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None


class GradSumAcross(torch.autograd.Function):
    """Forward: identity on a parameter replicated across class shards (SphereFace2's bias).
    Backward: all-reduce SUM, so every rank holds the full gradient of the replicated loss."""

    @staticmethod
    def forward(ctx, x, group):  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return all_reduce(g.contiguous(), "sum", ctx.group), None


def binary_ce(z: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, lam: float,
              weight: float, group: Optional[Any] = None) -> torch.Tensor:
    """SphereFace2 per-row loss [B] (replicated):
    ``weight * [lam softplus(-z_y) + (1 - lam) sum_{j != y} softplus(z_j)]``; one SUM all-reduce.
    softplus is linear beyond 20, so |z| up to 1e4 cannot overflow (no log(1 + exp(z)))."""
    has = target >= 0
    idx = target.clamp(min=0).unsqueeze(1)
    z_t = _take(z, idx)
    row = (1.0 - lam) * F.softplus(z).sum(1)
    fix = lam * F.softplus(-z_t) - (1.0 - lam) * F.softplus(z_t)
    row = row + torch.where(has, fix, torch.zeros_like(fix))
    row = torch.where(valid, weight * row, torch.zeros_like(row))
    return _SumAcross.apply(row, group)


def topk_threshold(c: torch.Tensor, target: torch.Tensor, k: int, group: Optional[Any] = None) -> torch.Tensor:
    """Per-row k-th largest NON-target score over the global class set [B] (replicated), from
    class-sharded scores ``c [B, C_local]``: local top-k, then an all-gather of k candidates per row
    (padded with -inf where a shard has fewer than k columns). No gradient."""
    c = c.detach().float()
    if c.shape[1]:  # (a shard with no column, an empty Partial-FC sample, only pads with -inf)
        idx = target.clamp(min=0).unsqueeze(1)
        c = c.scatter(1, idx, torch.where(target >= 0, float("-inf"), _take(c, idx)).unsqueeze(1))
    kk = min(k, c.shape[1])
    local = torch.full((c.shape[0], k), float("-inf"), device=c.device)
    local[:, :kk] = c.topk(kk, dim=1).values
    cand = all_gather_nograd(local.t().contiguous(), group)  # [W * k, B]
    return cand.topk(k, dim=0).values[-1]
