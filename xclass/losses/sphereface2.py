"""SphereFace2 (Wen et al., ICLR 2022): one-vs-all binary logits, no softmax normaliser.

Logits: target ``z_y = r (g(cos_y) - m) + b``, others ``z_j = r (g(cos_j) + m) + b`` with
``g(c) = 2 ((c + 1) / 2)^t - 1`` (type "C", OpenSphere) or, type "A" (WeSpeaker),
``g(cos(theta + m))`` for the target and ``g(cos(theta - m))`` for the others.
Loss per row: ``(lw / r) [lam softplus(-z_y) + (1 - lam) sum_{j != y} softplus(z_j)]``
(:func:`xclass.losses.objectives.binary_ce`); it needs only a SUM across class shards.
The scalar bias ``b`` belongs to the head (replicated; its gradient is summed over shards).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xclass.losses.margins import MARGINS, MarginAux, angular, safe_map, target_mask


@MARGINS.register("sphereface2")
@dataclass(frozen=True)
class SphereFace2:
    """Defaults: OpenSphere class defaults lam = 0.7, r = 40, m = 0.4, t = 3, lw = 50.
    ``grad="exact"`` differentiates through g (WeSpeaker); ``"straight_through"`` gives
    ``dz/dcos = r`` (OpenSphere detaches the shift)."""

    lam: float = 0.7
    r: float = 40.0
    m: float = 0.4
    t: float = 3.0
    lw: float = 50.0
    margin_type: str = "C"
    grad: str = "exact"
    eps: float = 1e-5
    normalized = True
    objective = "binary"
    sub_centers = 1
    needs_target_cos = False

    def g(self, c: torch.Tensor) -> torch.Tensor:
        return 2.0 * ((c + 1.0) / 2.0) ** self.t - 1.0

    def _shift(self, c: torch.Tensor, sign: float) -> torch.Tensor:
        """g-adjusted similarity with margin: sign=-1 for targets, +1 for the others."""
        if self.margin_type == "C":
            return self.g(c) + sign * self.m
        if self.margin_type == "A":
            if sign < 0:
                return self.g(angular(c, 1.0, self.m, 0.0, "continuous"))
            return self.g(torch.cos(torch.acos(c) - self.m))
        raise ValueError(f"sphereface2 margin_type {self.margin_type!r} not in ('C', 'A')")

    def __call__(self, cos: torch.Tensor, target: torch.Tensor, aux: MarginAux) -> torch.Tensor:
        """z [B, C_local] fp32 without the bias."""
        c = cos.float()
        neg = safe_map(c, lambda x: self._shift(x, +1.0), self.grad, self.eps)
        if c.shape[1] == 0:  # an empty Partial-FC shard: no target column
            return self.r * neg
        idx = target.clamp(min=0).unsqueeze(1)
        ct = c.gather(1, idx).squeeze(1)
        pos = safe_map(ct, lambda x: self._shift(x, -1.0), self.grad, self.eps)
        cur = neg.gather(1, idx).squeeze(1)
        val = torch.where(target >= 0, pos, cur)
        return self.r * neg.scatter(1, idx, val.unsqueeze(1))

    @property
    def loss_weight(self) -> float:
        return self.lw / self.r

    def formula(self, c, labels, step=0, seed=0, bias=0.0):
        """Binary objective: the mean loss over labelled rows, written out (margin type C):
        ``lw/r * [lam log(1 + e^-(r(g(cos_y) - m) + b)) + (1 - lam) sum_j!=y log(1 + e^(r(g(cos_j) + m) + b))]``
        with ``g(c) = 2 ((c + 1)/2)^t - 1``."""
        if self.margin_type != "C":
            raise NotImplementedError("the written formula covers margin_type C")
        g = 2 * ((c + 1) / 2) ** self.t - 1
        tgt = target_mask(labels, c.shape[1])
        pos = self.lam * torch.log1p(torch.exp(-(self.r * (g - self.m) + bias)))
        neg = (1 - self.lam) * torch.log1p(torch.exp(self.r * (g + self.m) + bias))
        per = torch.where(tgt, pos, neg).sum(1) * self.lw / self.r
        valid = labels >= 0
        return per[valid].sum() / max(int(valid.sum()), 1)

    def init_bias(self, num_classes: int) -> float:
        """OpenSphere's bias init: the value making the initial loss balanced for ``num_classes``."""
        z = self.lam / ((1.0 - self.lam) * (num_classes - 1))
        a_y = self.r * (2.0 * 0.5 ** self.t - 1.0 - self.m)
        a_i = self.r * (2.0 * 0.5 ** self.t - 1.0 + self.m)
        return (math.log(2.0 * z) - a_i
                - math.log(1.0 - z + math.sqrt((1.0 - z) ** 2 + 4.0 * z * math.exp(a_y - a_i))))
