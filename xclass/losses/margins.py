"""Margin functions on the LOCAL class shard. Pure math: no ranks, no process groups.

A margin maps ``(cos [B, C_local * K], target [B], aux) -> logits [B, C_local]`` (fp32):
``cos`` are the scores of the (replicated, gathered) batch against this rank's class rows,
sharded over classes; ``target`` is the local column of each row's class or -1 when the
class is on another rank (or the row is ignored). Only the target entries change, so a
margin costs O(B), not O(B * C_local) (SphereFace2 is the exception: every entry is shifted).

Gradient modes (``grad``), chosen per margin by name:
- ``"exact"``: forward value ``f(clamp(cos, -1, 1))``; derivative ``f'`` evaluated at
  ``clamp(cos, -1 + eps, 1 - eps)`` (``eps`` = 1e-5 by default, as OpenSphere clamps). It equals
  autograd of the closed form for |cos| < 1 - eps and stays finite at cos = +-1 and cos > 1,
  where the true derivative of arccos-based margins is infinite.
- ``"straight_through"``: same forward value, ``d logit / d cos = s`` everywhere
  (insightface since 2022, OpenSphere's SphereFace-R "gradient detachment").

Class attributes read by heads: ``normalized`` (cosines vs raw dot products), ``objective``
(``"softmax"`` or ``"binary"``), ``sub_centers`` (rows per class), ``needs_target_cos``
(ElasticFace+ needs every row's target cosine, which the head all-reduces into ``aux``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from xclass.losses.target_replace import replace_target
from xclass.registry import Registry

MARGINS: Registry = Registry("margin")
GRAD_MODES = ("exact", "straight_through")
FALLBACKS = ("none", "insightface", "continuous")


def target_mask(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[B, C] bool: the target entry of every row with a label >= 0 (for the written formulas)."""
    cols = torch.arange(n_classes, device=labels.device)
    return (cols[None, :] == labels[:, None]) & (labels >= 0)[:, None]


def written_fallback(c: torch.Tensor, theta_m: torch.Tensor, phi: torch.Tensor, m: float, kind: str) -> torch.Tensor:
    """The ArcFace-family target past ``theta + m > pi`` (m1 = 1), written out for the formulas:
    ``none`` keeps cos(theta + m), ``insightface`` is cos(theta) - m sin(m), ``continuous`` is
    cos(theta) - cos(pi - m) - 1."""
    if kind == "none":
        return phi
    alt = c - m * math.sin(m) if kind == "insightface" else c - math.cos(math.pi - m) - 1.0
    return torch.where(theta_m <= math.pi, phi, alt)


@dataclass(frozen=True)
class MarginAux:
    """Per-step side inputs, identical on every rank.

    step: optimizer step (schedules, ElasticFace draws). seed: run seed.
    valid: [B] bool, replicated; False for ignored rows.
    target_cos: [B] fp32 detached, replicated; every row's raw target cosine (0 if ignored);
    only filled when the margin sets ``needs_target_cos``.
    topk_threshold: [B] replicated global k-th largest non-target score (margins with ``needs_topk``).
    owned: the caller owns ``cos`` (a temporary fp32 score buffer): margins may overwrite it
    instead of allocating another [B, C] tensor. Tests and direct callers leave it False.
    """

    step: int = 0
    seed: int = 0
    valid: Optional[torch.Tensor] = None
    target_cos: Optional[torch.Tensor] = None
    owned: bool = False
    topk_threshold: Optional[torch.Tensor] = None


def safe_map(ct: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], grad: str,
             eps: float) -> torch.Tensor:
    """Apply ``f`` to raw cosines ``ct`` (any shape, fp32) with the named gradient mode."""
    if grad not in GRAD_MODES:
        raise ValueError(f"margin grad mode {grad!r} not in {GRAD_MODES}")
    c1 = ct.clamp(-1.0, 1.0)
    if grad == "straight_through":
        return ct + (f(c1) - ct).detach()
    # value f(c1); the derivative is f' at the eps-clamped point, passed straight to ct
    ce = ct - (ct - c1.clamp(-1.0 + eps, 1.0 - eps)).detach()
    fe = f(ce)
    return fe + (f(c1) - fe).detach()


def angular(c: torch.Tensor, m1, m2, m3, fallback: str, easy: bool = False) -> torch.Tensor:
    """Combined-margin target value ``cos(m1 * theta + m2) - m3`` on clamped cosines ``c``.

    m1, m2, m3 are floats or [B] tensors. When ``m1 * theta + m2 > pi`` the curve turns back up;
    ``fallback`` picks the replacement there: ``none`` (keep it), ``insightface``
    (``c - m2 sin m2 - m3``, the ArcFace paper code, discontinuous) or ``continuous``
    (``c - cos(theta_b) - 1 - m3`` with ``theta_b = (pi - m2) / m1``; WeSpeaker's for m1 = 1).
    ``easy``: keep ``c`` where ``c <= 0`` (ArcFace easy margin).
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"margin fallback {fallback!r} not in {FALLBACKS}")
    theta = torch.acos(c)
    phi = torch.cos(m1 * theta + m2) - m3
    if easy:
        return torch.where(c > 0, phi, c)
    if fallback == "none":
        return phi
    m2t = torch.as_tensor(m2, dtype=c.dtype, device=c.device)
    if fallback == "insightface":
        alt = c - m2t * torch.sin(m2t) - m3
    else:
        alt = c - torch.cos((math.pi - m2t) / m1) - 1.0 - m3
    return torch.where(m1 * theta + m2 <= math.pi, phi, alt)


# ----------------------------------------------------------------------------- softmax family
@MARGINS.register("softmax")
@dataclass(frozen=True)
class Softmax:
    """Plain softmax on raw dot products ``s * <x, w>`` (no normalisation)."""

    s: float = 1.0
    grad: str = "exact"
    normalized = False
    objective = "softmax"
    sub_centers = 1
    needs_target_cos = False

    def __call__(self, cos: torch.Tensor, target: torch.Tensor, aux: MarginAux) -> torch.Tensor:
        return cos.float() * self.s

    def formula(self, c: torch.Tensor, labels: torch.Tensor, step: int = 0, seed: int = 0) -> torch.Tensor:
        """The margin written out, independently of ``__call__`` (tests/losses/test_margins.py
        checks one against the other for every registered margin): ``c`` [B, C] are cosines
        (raw dot products when not ``normalized``), reduced over sub-centres; ``labels`` [B], < 0 =
        ignored. Softmax objectives return the logits [B, C]: here ``s * c`` everywhere."""
        return self.s * c


@MARGINS.register("norm_softmax")
@dataclass(frozen=True)
class NormSoftmax(Softmax):
    """Normalised softmax ``s * cos`` (insightface "nsoftmax", s = 64)."""

    s: float = 64.0
    normalized = True


@MARGINS.register("cosface")
@dataclass(frozen=True)
class CosFace(NormSoftmax):
    """CosFace / AM-softmax: target ``s * (cos - m)``; defaults s = 64, m = 0.35."""

    m: float = 0.35
    eps: float = 1e-5

    def __call__(self, cos, target, aux):
        return replace_target(cos, target, self.s,
                              lambda ct: safe_map(ct, lambda c: c - self.m, self.grad, self.eps), aux.owned)

    def formula(self, c, labels, step=0, seed=0):
        """target ``s (cos - m)``, others ``s cos``."""
        return torch.where(target_mask(labels, c.shape[1]), self.s * (c - self.m), self.s * c)


@MARGINS.register("combined")
@dataclass(frozen=True)
class Combined(NormSoftmax):
    """Combined margin ``s * (cos(m1 theta + m2) - m3)``; insightface's "combined" (1, 0.3, 0.2)."""

    m1: float = 1.0
    m2: float = 0.3
    m3: float = 0.2
    fallback: str = "continuous"
    eps: float = 1e-5

    def target_value(self, c: torch.Tensor, aux: MarginAux) -> torch.Tensor:
        return angular(c, self.m1, self.m2, self.m3, self.fallback)

    def __call__(self, cos, target, aux):
        f = lambda c: self.target_value(c, aux)  # noqa: E731
        return replace_target(cos, target, self.s, lambda ct: safe_map(ct, f, self.grad, self.eps), aux.owned)

    def formula(self, c, labels, step=0, seed=0):
        """target ``s (cos(m1 theta + m2) - m3)``; past ``m1 theta + m2 > pi``: ``none`` keeps it,
        ``insightface`` is ``cos - m2 sin m2 - m3``, ``continuous`` is
        ``cos - cos((pi - m2)/m1) - 1 - m3``."""
        th = torch.acos(c)
        phi = torch.cos(self.m1 * th + self.m2) - self.m3
        if self.fallback == "insightface":
            alt = c - self.m2 * math.sin(self.m2) - self.m3
        else:
            alt = c - math.cos((math.pi - self.m2) / self.m1) - 1.0 - self.m3
        t = phi if self.fallback == "none" else torch.where(self.m1 * th + self.m2 <= math.pi, phi, alt)
        return torch.where(target_mask(labels, c.shape[1]), self.s * t, self.s * c)


@MARGINS.register("arcface")
@dataclass(frozen=True)
class ArcFace(Combined):
    """ArcFace ``s * cos(theta + m)``; s = 64, m = 0.5, fallback ``c - m sin m`` as in the paper
    code and PML (``continuous`` and ``none`` selectable), optional ``easy_margin``."""

    m: float = 0.5
    easy_margin: bool = False
    fallback: str = "insightface"

    def target_value(self, c, aux):
        return angular(c, 1.0, self.m, 0.0, self.fallback, self.easy_margin)

    def margin_for(self, step: int) -> float:
        return self.m

    def formula(self, c, labels, step=0, seed=0):
        """target ``s cos(theta + m)`` (easy margin: ``s cos`` where cos <= 0), fallback past pi."""
        m = self.margin_for(step)
        th = torch.acos(c)
        phi = torch.cos(th + m)
        t = torch.where(c > 0, phi, c) if self.easy_margin else written_fallback(c, th + m, phi, m, self.fallback)
        return torch.where(target_mask(labels, c.shape[1]), self.s * t, self.s * c)


@MARGINS.register("aam")
@dataclass(frozen=True)
class AAM(ArcFace):
    """Speaker AAM-softmax (WeSpeaker): ArcFace with s = 32 and a margin warm-up from ``m_start``
    at step ``warmup_start`` to ``m`` at ``warmup_end``: ``m0 + (m - m0)(1 - 0.001 ** (i / N))``
    (``schedule="exp"``) or linear; ``warmup_end <= warmup_start`` means no warm-up."""

    s: float = 32.0
    m: float = 0.2
    m_start: float = 0.0
    warmup_start: int = 0
    warmup_end: int = 0
    schedule: str = "exp"
    fallback: str = "continuous"

    def margin_at(self, step: int) -> float:
        n = self.warmup_end - self.warmup_start
        if n <= 0 or step > self.warmup_end:
            return self.m
        if step < self.warmup_start:
            return self.m_start
        x = (step - self.warmup_start) / n
        ratio = 1.0 - 0.001 ** x if self.schedule == "exp" else x
        return self.m_start + (self.m - self.m_start) * ratio

    def target_value(self, c, aux):
        return angular(c, 1.0, self.margin_at(aux.step), 0.0, self.fallback, self.easy_margin)

    def margin_for(self, step: int) -> float:
        return self.margin_at(step)


@MARGINS.register("subcenter_arcface")
@dataclass(frozen=True)
class SubCenterArcFace(ArcFace):
    """Sub-center ArcFace: K rows per class (class-major ``c * K + k``), max over K, then ArcFace."""

    k: int = 3

    @property
    def sub_centers(self) -> int:  # type: ignore[override]
        return self.k

    def __call__(self, cos, target, aux):
        cos = cos.view(cos.shape[0], cos.shape[1] // self.k, self.k).amax(-1)  # no -1: 0 columns
        # amax saves its output for backward, so the reduced scores must not be overwritten
        return super().__call__(cos, target, replace(aux, owned=False))
