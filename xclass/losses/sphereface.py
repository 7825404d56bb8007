"""SphereFace's multiplicative angular margin (SphereFace-R as in OpenSphere), a Combined-margin
subclass with its own target function."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xclass.losses.margins import MARGINS, Combined, target_mask


@MARGINS.register("sphereface")
@dataclass(frozen=True)
class SphereFace(Combined):
    """Multiplicative angular margin (SphereFace-R as in OpenSphere: s = 30, m = 1.7):
    target ``s * (lam cos + psi) / (1 + lam)``, ``psi = (-1)^k cos(m theta) - 2k``,
    ``k = floor(m theta / pi)`` (monotone, so no fallback). ``lam`` > 0 is A-Softmax blending."""

    s: float = 30.0
    m: float = 1.7
    lam: float = 0.0

    def target_value(self, c, aux):
        theta = torch.acos(c)
        k = torch.floor(self.m * theta / math.pi).detach()
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        psi = sign * torch.cos(self.m * theta) - 2.0 * k
        return (self.lam * c + psi) / (1.0 + self.lam)

    def formula(self, c, labels, step=0, seed=0):
        """target ``s (lam cos + psi) / (1 + lam)``, ``psi = (-1)^k cos(m theta) - 2k``,
        ``k = floor(m theta / pi)``."""
        th = torch.acos(c)
        k = torch.floor(self.m * th / math.pi)
        psi = (-1.0) ** k * torch.cos(self.m * th) - 2 * k
        return torch.where(target_mask(labels, c.shape[1]), self.s * (self.lam * c + psi) / (1 + self.lam), self.s * c)
