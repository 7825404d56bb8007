"""Dense single-process reference: the meaning of every margin head, for tests and baselines.

Everything is plain autograd on the full ``[B, C]`` logits (no custom Functions, no
collectives): ``F.cross_entropy`` for softmax objectives and the written-out SphereFace2 sum.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from xclass.losses.margins import MarginAux

IGNORE_INDEX = -100  # same value as xclass.heads.base.IGNORE_INDEX (losses do not import heads)


def dense_scores(emb: torch.Tensor, weight: torch.Tensor, normalized: bool) -> torch.Tensor:
    """emb [B, d], weight [R, d] -> [B, R] cosines (normalized) or dot products, in emb's dtype."""
    if normalized:
        emb, weight = F.normalize(emb, dim=1), F.normalize(weight, dim=1)
    return emb @ weight.to(emb.dtype).t()


def dense_logits(emb: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, margin, *,
                 step: int = 0, seed: int = 0) -> torch.Tensor:
    """Margin logits [B, C] fp32 for the full class set; labels [B] global ids or IGNORE_INDEX."""
    cos = dense_scores(emb, weight, margin.normalized)
    valid = labels != IGNORE_INDEX
    target = torch.where(valid, labels, torch.full_like(labels, -1))
    tcos = None
    if margin.needs_target_cos:
        c = cos.view(cos.shape[0], -1, margin.sub_centers).amax(-1)
        tcos = torch.where(valid, c.gather(1, target.clamp(min=0)[:, None]).squeeze(1).float(),
                           torch.zeros(c.shape[0], device=c.device)).detach()
    return margin(cos, target, MarginAux(step=step, seed=seed, valid=valid, target_cos=tcos))


def dense_margin_loss(emb: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, margin, *,
                      bias: Optional[torch.Tensor] = None, step: int = 0, seed: int = 0,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Scalar loss, mean over non-ignored rows (0 when all rows are ignored)."""
    z = dense_logits(emb, labels, weight, margin, step=step, seed=seed)
    valid = labels != IGNORE_INDEX
    n = valid.sum().clamp(min=1)
    if margin.objective == "softmax":
        per = F.cross_entropy(z, labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
        return torch.where(valid, per, torch.zeros_like(per)).sum() / n
    if label_smoothing:
        raise ValueError("label smoothing is defined for softmax objectives only")
    z = z + (bias if bias is not None else 0.0)
    onehot = F.one_hot(labels.clamp(min=0), z.shape[1]).bool()
    per = torch.where(onehot, margin.lam * F.softplus(-z), (1 - margin.lam) * F.softplus(z)).sum(1)
    per = margin.loss_weight * per
    return torch.where(valid, per, torch.zeros_like(per)).sum() / n
