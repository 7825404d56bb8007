"""``replace_target``: the logits ``s * cos`` with each row's target entry replaced by
``s * f(target cos)``, as a custom autograd function that reads and writes the ``[B, C]`` scores
once per pass. Pure math on the local class shard, as :mod:`xclass.losses.margins`."""
from __future__ import annotations

from typing import Callable

import torch


class _ReplaceTarget(torch.autograd.Function):
    """out = s * cos with the local target entries replaced by s * f(ct) (ct = raw target cosine).

    One [B, C] pass forward and one backward: the O(B) target function is differentiated with
    its own small graph instead of autograd's gather/scatter backward (which would add three
    full [B, C] passes: a zero-filled scatter buffer, its accumulation and a clone)."""

    @staticmethod
    def forward(ctx, cos, target, s: float, f, inplace: bool):  # type: ignore[override]
        idx = target.clamp(min=0).unsqueeze(1)
        has = target >= 0
        ct = cos.detach().gather(1, idx).squeeze(1).float()
        with torch.enable_grad():
            leaf = ct.clone().requires_grad_(True)
            val = f(leaf)
        if inplace and cos.dtype == torch.float32:
            # the head's score buffer is a temporary nothing else saved: scale it in place
            out = cos.mul_(s)
            ctx.mark_dirty(cos)
        else:
            out = cos.detach().float() * s
        out.scatter_(1, idx, torch.where(has, s * val.detach(), s * ct).unsqueeze(1))
        ctx.leaf, ctx.val, ctx.s, ctx.dtype, ctx.inplace = leaf, val, s, cos.dtype, inplace
        ctx.save_for_backward(idx, has)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        idx, has = ctx.saved_tensors
        gv = g.gather(1, idx).squeeze(1) * ctx.s
        (g_ct,) = torch.autograd.grad(ctx.val, ctx.leaf, torch.where(has, gv, torch.zeros_like(gv)))
        # g is the objective's fresh softmax buffer (this op is its only consumer): reuse it
        g_cos = g.mul_(ctx.s) if ctx.inplace else g * ctx.s
        g_cos.scatter_(1, idx, torch.where(has, g_ct, gv).unsqueeze(1))
        return g_cos.to(ctx.dtype), None, None, None, None


def replace_target(cos: torch.Tensor, target: torch.Tensor, s: float,
                   new: Callable[[torch.Tensor], torch.Tensor], inplace: bool = False) -> torch.Tensor:
    """logits [B, C] fp32 = s * cos, with the target column of rows holding a local target
    replaced by ``s * new(ct)``, where ct [B] fp32 are the raw target cosines. ``new`` must
    depend on ct only (other inputs are constants): its gradient is taken w.r.t. ct alone.
    ``inplace`` (set by heads through ``MarginAux.owned``): ``cos`` is a temporary score buffer
    that may be overwritten, and the incoming gradient may be scaled in place.
    A shard with no column (an empty Partial-FC sample) holds no target: ``s * cos`` as is."""
    if cos.shape[1] == 0:
        return cos.float() * s
    return _ReplaceTarget.apply(cos, target, float(s), new, inplace)
