"""The ``zloss`` rows of tools/bench_gpu.py: ``zloss_efficient`` (the exact D-independent
update) vs full log-softmax cross-entropy over D classes, d = 128, m = 256 rows, fp32."""
from __future__ import annotations

import types
from typing import Any, Dict, List

import torch

from bench_gpu import _ctx, emit, measured, time_ms


def zloss_step(D: int, a, device: torch.device) -> float:
    from xclass import components
    from xclass.heads.base import HEADS

    components.load_all()
    cfg = types.SimpleNamespace(name="zloss_efficient", params={"dtype": "float32", "init_std": 0.05,
                                                                "stabilize_period": 0})
    head = HEADS.get("zloss_efficient")(cfg, num_classes=D, embedding_dim=a.zd, ctx=_ctx(device), seed=0)
    head = head.to(device)
    opt = head.make_optimizer(types.SimpleNamespace(name="sgd", lr=0.01, momentum=0.0, weight_decay=0.0,
                                                    head_lr=None))
    g = torch.Generator().manual_seed(0)
    H = torch.randn(a.zm, a.zd, generator=g).to(device)
    y = torch.randint(0, D, (a.zm,), generator=g).to(device)

    def step() -> None:
        emb = H.clone().requires_grad_(True)
        head(emb, y).loss.backward()
        opt.step()
        opt.zero_grad()

    return time_ms(step, device, a.warmup, a.steps)


def logsoftmax_step(D: int, a, device: torch.device) -> float:
    W = torch.nn.Parameter(torch.randn(D, a.zd + 1, device=device) * 0.05)
    opt = torch.optim.SGD([W], lr=0.01)
    H = torch.randn(a.zm, a.zd, device=device)
    y = torch.randint(0, D, (a.zm,), device=device)
    ones = torch.ones(a.zm, 1, device=device)

    def step() -> None:
        emb = H.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(torch.cat([emb, ones], 1) @ W.t(), y).backward()
        opt.step()
        opt.zero_grad()

    return time_ms(step, device, a.warmup, a.steps)


def bench_zloss(a, device: torch.device) -> List[Dict[str, Any]]:
    rows = []
    for D in a.z_D:
        base = {"bench": "zloss", "D": D, "dtype": "fp32", "r": 1.0, "d": a.zd, "m": a.zm}
        ls = measured(dict(base, method="logsoftmax"), device, lambda: {"step_ms": logsoftmax_step(D, a, device)})
        zl = measured(dict(base, method="zloss_efficient"), device, lambda: {"step_ms": zloss_step(D, a, device)})
        if ls.get("step_ms") and zl.get("step_ms"):
            zl["speedup"] = ls["step_ms"] / zl["step_ms"]
        emit([ls, zl], a)
        rows += [ls, zl]
    return rows
