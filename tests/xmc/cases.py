"""Shared fixtures of the XMC head tests: a global batch of 8 rows over C = 7 labels (ragged
per-rank batches, rows with labels on other ranks, a duplicated label, an all-padding row),
the head cases, and ``run_all(ctx)`` which runs every case on one rank and returns its results."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from xclass.heads.base import HEADS
from xclass.heads.partition import class_range
from xclass.heads.xmc import heads as _heads  # noqa: F401  (registers)
from xclass.heads.xmc.tower import select_bags

C, D, V, SEED = 7, 5, 11, 3
SIZES = {1: [8], 2: [5, 3], 3: [5, 2, 1]}
LABELS = torch.tensor([
    [0, 6, -100], [3, -100, -100], [-100, -100, -100], [1, 2, 5], [6, 6, 4],
    [2, -100, -100], [5, 0, -100], [4, 3, 1]])
SGD = SimpleNamespace(name="sgd", lr=0.5, head_lr=None, momentum=0.9, weight_decay=0.01)
SGD0 = SimpleNamespace(name="sgd", lr=0.5, head_lr=None, momentum=0.9, weight_decay=0.0)
ADAMW = SimpleNamespace(name="adamw", lr=0.05, head_lr=None, momentum=0.9, weight_decay=0.01)

CASES = [
    dict(id="dual_free", head="dual_decoupled", params=dict(scale=4.0), optim=SGD),
    dict(id="dual_free_dot", head="dual_decoupled", params=dict(scale=1.5, normalize=False, init_std=0.5),
         optim=ADAMW),
    dict(id="dual_text", head="dual_decoupled", params=dict(label_repr="text", scale=5.0, token_dim=4,
                                                             hidden=[6]), optim=SGD),
    dict(id="dual_text_free", head="dual_decoupled", params=dict(label_repr="text+free", scale=3.0, token_dim=4),
         optim=ADAMW),
    dict(id="dual_features_free", head="dual_decoupled", params=dict(label_repr="features+free", scale=3.0,
                                                                      hidden=[6]), optim=ADAMW),
    dict(id="dual_shortlist", head="dual_decoupled", params=dict(scale=4.0, init_std=0.5, shortlist_k=1,
                                                                  shortlist_refresh=1), optim=SGD0),
    dict(id="ova_sum", head="ova", params=dict(init_std=0.5), optim=SGD),
    dict(id="ova_mean_cos", head="ova", params=dict(normalize=True, scale=3.0, pos_weight=2.0,
                                                    reduction="mean"), optim=ADAMW),
]


def label_bags():
    """CSR token bags of the C labels (label 2 has an empty bag)."""
    g = torch.Generator().manual_seed(5)
    lens = torch.tensor([3, 1, 0, 4, 2, 2, 5])
    values = torch.randint(0, V, (int(lens.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    return values, offsets


def batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, D, generator=g) * 1.5, LABELS.roll(step, 0)


def label_features():
    """[C, 4] label feature rows (e.g. frozen text-tower embeddings of the label text)."""
    return torch.randn(C, 4, generator=torch.Generator().manual_seed(6))


def head_params(case, start: int, stop: int):
    p = dict(case["params"])
    if p.get("label_repr", "free").startswith("features"):
        p["label_features"] = label_features()[start:stop]
    elif p.get("label_repr", "free") != "free":
        p["label_tokens"] = select_bags(*label_bags(), torch.arange(start, stop))
        p["vocab_size"] = V
    return p


def build(case, ctx):
    start, stop = class_range(C, ctx.rank, ctx.world_size)
    cfg = SimpleNamespace(params=head_params(case, start, stop), sample_rate=1.0)
    return HEADS.get(case["head"])(cfg, num_classes=C, embedding_dim=D, ctx=ctx, seed=SEED)


def _local(x, ctx):
    sizes = SIZES[ctx.world_size]
    a = sum(sizes[:ctx.rank])
    return x[a:a + sizes[ctx.rank]]


def _trim(labels):
    """Drop trailing all-padding columns (ranks then hold different K)."""
    keep = (labels >= 0).any(0).nonzero()
    return labels[:, :int(keep.max()) + 1] if keep.numel() else labels[:, :1]


def run_case(case, ctx):
    head = build(case, ctx)
    opt = head.make_optimizer(case["optim"])
    out = {"w0": head.local_weight()[0].clone()}
    for step in range(2):
        emb, labels = batch(step)
        e = _local(emb, ctx).clone().requires_grad_(True)
        res = head(e, _trim(_local(labels, ctx)))
        res.loss.backward()
        out[f"loss{step}"] = res.loss.detach()
        if step == 0:
            opt.sync_grads()
            out["emb_grad"] = e.grad.clone()
            if getattr(head, "active", None) is not None:
                out["active_rows"], out["w_grad"] = head.active[0] + head.start, head.active[1].grad.clone()
            elif getattr(head, "weight", None) is not None:
                out["w_grad"] = head.weight.grad.clone()
            out["b_grad"] = head.bias.grad.clone() if getattr(head, "bias", None) is not None else None
            tower = getattr(head, "tower", None)
            out["tower_grad"] = {n: p.grad.clone() for n, p in tower.named_parameters()} if tower else {}
            out["last_active"] = getattr(head, "last_active", None)
        opt.step()
        opt.zero_grad()
        if step == 0:
            out["w1"] = head.weight.detach().clone() if getattr(head, "weight", None) is not None else None
            out["tower1"] = {n: p.detach().clone() for n, p in head.tower.named_parameters()} \
                if getattr(head, "tower", None) is not None else {}
            out["b1"] = head.bias.detach().clone() if getattr(head, "bias", None) is not None else None
    return out


def run_all(ctx):
    torch.manual_seed(1234 + ctx.rank)  # head init must not depend on the global RNG
    return {c["id"]: run_case(c, ctx) for c in CASES}
