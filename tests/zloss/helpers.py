"""Shared helpers of the zloss tests: config objects, a learnable synthetic task, errors."""
from __future__ import annotations

import types

import torch

from xclass.parallel import ParallelContext
from xclass.heads.base import HEADS
import xclass.heads.zloss  # noqa: F401  (registers the zloss heads)

D, d, M = 50, 8, 16


def head_cfg(name: str, **params) -> types.SimpleNamespace:
    base = {"dtype": "float64", "init_std": 0.1}
    base.update(params)
    return types.SimpleNamespace(name=name, margin=None, margin_params={}, sample_rate=1.0,
                                 label_smoothing=0.0, params=base)


def optim_cfg(lr: float = 0.5, weight_decay: float = 0.0, name: str = "sgd") -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, lr=lr, momentum=0.0, weight_decay=weight_decay, head_lr=None)


def build(name: str, ctx=None, seed: int = 0, num_classes: int = D, **params):
    return HEADS.get(name)(head_cfg(name, **params), num_classes=num_classes, embedding_dim=d,
                           ctx=ctx or ParallelContext.single(), seed=seed)


def task_batches(n: int, K: int, seed: int = 1, m: int = M, pad: bool = False):
    """A learnable stream: h = sum of the targets' prototypes + noise.
    Half of the rows draw from 6 "hot" classes, so duplicate targets across rows occur.
    pad=True marks the last label of every third row as padding (-100)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(D, d, generator=g, dtype=torch.float64)
    out = []
    for _ in range(n):
        y = torch.randint(0, D, (m, K), generator=g)
        hot = torch.rand(m, generator=g) < 0.5
        y[hot] = torch.randint(0, 6, (int(hot.sum()), K), generator=g)
        H = protos[y].sum(1) / K + 0.5 * torch.randn(m, d, generator=g, dtype=torch.float64)
        if pad and K > 1:
            y[::3, -1] = -100
        out.append((H, y if K > 1 else y[:, 0]))
    return out


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| in float64."""
    x, ref = x.double(), ref.double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
