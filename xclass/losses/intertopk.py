"""Sub-center ArcFace with the inter-top-k penalty (WeSpeaker ``ArcMarginProduct_intertopk_subcenter``).

For each row, the ``top_k`` hardest non-target classes (largest cosine over the GLOBAL class set)
get ``cos(theta - mp)`` instead of ``cos(theta)`` (pushing them harder); the target gets ArcFace.
The global k-th largest non-target cosine per row is a distributed top-k
(:func:`xclass.losses.objectives.topk_threshold`: local top-k, all-gather k candidates per
row); the head passes it in ``aux.topk_threshold``, so the margin itself stays rank-free.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from xclass.losses.margins import MARGINS, MarginAux, angular, safe_map, target_mask, written_fallback
from xclass.losses.target_replace import replace_target
from xclass.losses.objectives import topk_threshold


@MARGINS.register("intertopk_subcenter")
@dataclass(frozen=True)
class InterTopKSubCenter:
    """Defaults (WeSpeaker): s = 32, m = 0.2, K = 3 sub-centres, top_k = 5, mp = 0.06 (WeSpeaker
    scales mp = 0.06 m / 0.2 with the margin schedule; here both are fixed per config)."""

    s: float = 32.0
    m: float = 0.2
    k: int = 3
    top_k: int = 5
    mp: float = 0.06
    grad: str = "exact"
    fallback: str = "continuous"
    eps: float = 1e-5
    normalized = True
    objective = "softmax"
    needs_target_cos = False

    @property
    def sub_centers(self) -> int:
        return self.k

    @property
    def needs_topk(self) -> int:
        return self.top_k

    def __call__(self, cos: torch.Tensor, target: torch.Tensor, aux: MarginAux) -> torch.Tensor:
        c = cos.view(cos.shape[0], cos.shape[1] // self.k, self.k).amax(-1).float()
        thr = aux.topk_threshold
        if thr is None:  # dense use: the local shard is the whole class set
            thr = topk_threshold(c.detach(), target, self.top_k, group=None)
        cols = torch.arange(c.shape[1], device=c.device)
        hard = (c >= thr.unsqueeze(1)) & (cols.unsqueeze(0) != target.unsqueeze(1))
        shifted = safe_map(c, lambda x: torch.cos(torch.acos(x) - self.mp), self.grad, self.eps)
        c = torch.where(hard, shifted, c)
        f = lambda x: angular(x, 1.0, self.m, 0.0, self.fallback)  # noqa: E731
        return replace_target(c, target, self.s, lambda ct: safe_map(ct, f, self.grad, self.eps))

    def formula(self, c, labels, step=0, seed=0):
        """The ``top_k`` largest non-target cosines of a row become ``cos(theta - mp)``; then the
        target ``s cos(theta + m)`` (continuous fallback), others ``s cos``."""
        tgt = target_mask(labels, c.shape[1])
        nt = c.masked_fill(tgt, -2.0)
        kth = nt.topk(self.top_k, dim=1).values[:, -1:]
        c = torch.where((nt >= kth) & ~tgt, torch.cos(torch.acos(c) - self.mp), c)
        th = torch.acos(c)
        t = written_fallback(c, th + self.m, torch.cos(th + self.m), self.m, self.fallback)
        return torch.where(tgt, self.s * t, self.s * c)
