"""Spherical losses: functions of the target outputs A, q = sum_k o_k^2 and s = sum_k o_k.

Every loss here depends on the D outputs of one example only through

* ``A``    [m, K]  the outputs of the K target classes (padded entries masked),
* ``q``    [m]     the squared norm of the output vector,
* ``s``    [m]     the sum of the outputs,

which is what lets the factored head (:mod:`xclass.heads.zloss.factored`) train in O(d^2) per
example. All tensors are replicated (already reduced over class shards). The functions are
pure and differentiable; callers evaluate them in float64 (docs/zloss.md, note 5).

Conventions (docs/zloss.md, note 7):

* Z-loss: ``(1/a) log(1 + exp(a (b - z_c)))`` through ``logaddexp`` (torch's softplus
  switches to the identity above its threshold), sigma without epsilon, averaged over the
  K_j real positives of row j.
* Degenerate rows (sigma^2 <= ``rel_tiny`` * q/D, e.g. all outputs equal) get loss 0 and
  gradient 0 instead of NaN.
* Rows with no positive (all labels ignored) contribute 0; the batch loss is the mean over
  rows with at least one positive (see :func:`batch_loss`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from xclass.registry import Registry

SPHERICAL_LOSSES: Registry = Registry("spherical loss")

LossFn = Callable[..., torch.Tensor]


def _row_mean(per: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-target terms [m, K] over the real positives of each row -> [m]."""
    k = mask.sum(1).clamp_min(1).to(per.dtype)
    return torch.where(mask, per, torch.zeros_like(per)).sum(1) / k


@SPHERICAL_LOSSES.register("zloss")
def zloss(A: torch.Tensor, mask: torch.Tensor, q: torch.Tensor, s: torch.Tensor, D: int,
          a: float = 1.0, b: float = 0.0, rel_tiny: float = 1e-12) -> torch.Tensor:
    """Per-row Z-loss [m]: mean over positives of (1/a) softplus(a (b - z_c)),
    z_c = (o_c - mu) / sigma with mu, sigma over all D outputs (target included)."""
    if a <= 0:
        raise ValueError(f"zloss: params.a must be > 0, got {a}")
    mu = s / D
    var = q / D - mu * mu
    ok = var > rel_tiny * (q / D)
    sigma = torch.sqrt(torch.where(ok, var, torch.ones_like(var)))
    z = (A - mu[:, None]) / sigma[:, None]
    x = a * (b - z)
    per = torch.logaddexp(torch.zeros_like(x), x) / a
    row = _row_mean(per, mask)
    return torch.where(ok, row, torch.zeros_like(row))


@SPHERICAL_LOSSES.register("squared")
def squared(A: torch.Tensor, mask: torch.Tensor, q: torch.Tensor, s: torch.Tensor, D: int
            ) -> torch.Tensor:
    """Per-row squared error against the multi-hot target: ||o - y||^2 = q - 2 sum_k o_ck + K_j
    (targets of a row assumed distinct)."""
    kj = mask.sum(1).to(A.dtype)
    return q - 2.0 * torch.where(mask, A, torch.zeros_like(A)).sum(1) + kj


@SPHERICAL_LOSSES.register("log_spherical")
def log_spherical(A: torch.Tensor, mask: torch.Tensor, q: torch.Tensor, s: torch.Tensor, D: int,
                  eps: float = 1e-3) -> torch.Tensor:
    """Per-row log-spherical-softmax: mean_k [-log(o_ck^2 + eps)] + log(q + D eps)."""
    per = -torch.log(A * A + eps)
    return _row_mean(per, mask) + torch.log(q + D * eps)


@SPHERICAL_LOSSES.register("log_taylor")
def log_taylor(A: torch.Tensor, mask: torch.Tensor, q: torch.Tensor, s: torch.Tensor, D: int
               ) -> torch.Tensor:
    """Per-row log-Taylor-softmax: mean_k [-log(1 + o + o^2/2)] + log(D + s + q/2)."""
    per = -torch.log(1.0 + A + 0.5 * A * A)
    return _row_mean(per, mask) + torch.log(D + s + 0.5 * q)


def batch_loss(name: str, params: Dict[str, Any], A: torch.Tensor, mask: torch.Tensor,
               q: torch.Tensor, s: torch.Tensor, D: int) -> torch.Tensor:
    """Scalar loss: mean of the per-row loss over rows with >= 1 positive (all replicated).
    Computed in float64 whatever the input dtype."""
    fn: LossFn = SPHERICAL_LOSSES.get(name)
    A, q, s = A.double(), q.double(), s.double()
    rows = mask.any(1)
    per = fn(A, mask, q, s, D, **params)
    per = torch.where(rows, per, torch.zeros_like(per))
    return per.sum() / rows.sum().clamp_min(1).double()
