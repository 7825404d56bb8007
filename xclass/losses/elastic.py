"""ElasticFace (Boutros et al., CVPRW 2022): per-sample margins m_i ~ N(m, sigma).

The draws are keyed by (seed, step) over the *global* batch rows, so every rank and the dense
reference see the same margins. The '+' variants give easier samples (larger target cosine)
smaller margins: the margins sorted ascending are *scattered* to rows sorted by target cosine
descending (the reference code gathers with the permutation instead, which scrambles the
pairing: a row does not get the margin of its own rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xclass.losses.seeding import mix_key
from xclass.losses.margins import MARGINS, MarginAux, angular, safe_map, target_mask
from xclass.losses.target_replace import replace_target


def elastic_draws(n: int, seed: int, step: int) -> torch.Tensor:
    """[n] standard normals, a pure function of (seed, step, n) (CPU generator, fp32)."""
    g = torch.Generator().manual_seed(mix_key(seed, step, 0xE1A5))
    return torch.randn(n, generator=g, device="cpu")  # host generator keyed by (seed, step): device-independent


def plus_assign(margins: torch.Tensor, target_cos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """margins [B], target_cos [B], valid [B] bool -> [B]: over valid rows, the k-th smallest
    margin goes to the row with the k-th largest target cosine (Spearman -1); others unchanged."""
    # fixed shapes (no host sync): valid rows first, in descending target cosine (stable); the
    # ascending margins with the invalid rows' keys at +inf line up with them
    order = torch.argsort(torch.where(valid, target_cos, torch.full_like(target_cos, float("-inf"))),
                          descending=True, stable=True)
    ranked = torch.sort(torch.where(valid, margins, torch.full_like(margins, float("inf")))).values
    return margins.clone().scatter_(0, order, torch.where(valid[order], ranked, margins[order]))


@dataclass(frozen=True)
class _Elastic:
    s: float = 64.0
    m: float = 0.5
    sigma: float = 0.05
    plus: bool = False
    grad: str = "exact"
    fallback: str = "continuous"
    eps: float = 1e-5
    normalized = True
    objective = "softmax"
    sub_centers = 1

    @property
    def needs_target_cos(self) -> bool:
        return self.plus

    def margins(self, aux: MarginAux, n: int, device) -> torch.Tensor:
        """[n] per-row margins for the global batch rows of this step."""
        m = self.m + self.sigma * elastic_draws(n, aux.seed, aux.step)
        if self.plus:
            if aux.target_cos is None or aux.valid is None:
                raise ValueError("ElasticFace+ needs aux.target_cos and aux.valid")
            m = plus_assign(m.to(device), aux.target_cos, aux.valid)
        return m.to(device)

    def value(self, c: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def written_margins(self, c: torch.Tensor, labels: torch.Tensor, step: int, seed: int) -> torch.Tensor:
        """[B] per-row margins of the written formulas, from the cosines ``c`` [B, C] of the whole batch."""
        m = self.m + self.sigma * elastic_draws(c.shape[0], seed, step).to(c.dtype)
        if not self.plus:
            return m
        valid = labels >= 0
        tc = torch.where(valid, c.gather(1, labels.clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(m))
        return plus_assign(m, tc, valid)

    def __call__(self, cos: torch.Tensor, target: torch.Tensor, aux: MarginAux) -> torch.Tensor:
        m = self.margins(aux, cos.shape[0], cos.device)
        f = lambda c: self.value(c, m)  # noqa: E731
        return replace_target(cos, target, self.s, lambda ct: safe_map(ct, f, self.grad, self.eps), aux.owned)


@MARGINS.register("elastic_arc")
@dataclass(frozen=True)
class ElasticArc(_Elastic):
    """Target ``s * cos(theta + m_i)``; s = 64, m = 0.5, sigma = 0.05."""

    def value(self, c, m):
        return angular(c, 1.0, m, 0.0, self.fallback)

    def formula(self, c, labels, step=0, seed=0):
        """target ``s cos(theta + m_i)``, ``m_i = m + sigma * draw_i(seed, step)`` (the '+' variant
        hands the smallest margins to the rows of largest target cosine); continuous fallback."""
        m = self.written_margins(c, labels, step, seed)[:, None]
        th = torch.acos(c)
        phi = torch.cos(th + m)
        if self.fallback == "none":
            t = phi
        else:
            alt = c - m * torch.sin(m) if self.fallback == "insightface" else c - torch.cos(math.pi - m) - 1.0
            t = torch.where(th + m <= math.pi, phi, alt)
        return torch.where(target_mask(labels, c.shape[1]), self.s * t, self.s * c)


@MARGINS.register("elastic_arc_plus")
@dataclass(frozen=True)
class ElasticArcPlus(ElasticArc):
    sigma: float = 0.0175
    plus: bool = True


@MARGINS.register("elastic_cos")
@dataclass(frozen=True)
class ElasticCos(_Elastic):
    """Target ``s * (cos - m_i)``; s = 64, m = 0.35, sigma = 0.05."""

    m: float = 0.35

    def value(self, c, m):
        return c - m

    def formula(self, c, labels, step=0, seed=0):
        """target ``s (cos - m_i)``, ``m_i`` as for ``elastic_arc``."""
        m = self.written_margins(c, labels, step, seed)[:, None]
        return torch.where(target_mask(labels, c.shape[1]), self.s * (c - m), self.s * c)


@MARGINS.register("elastic_cos_plus")
@dataclass(frozen=True)
class ElasticCosPlus(ElasticCos):
    sigma: float = 0.02
    plus: bool = True
