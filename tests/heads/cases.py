"""Shared cases for the sharded-vs-dense tests: global batches, per-rank ragged slices, and the
rank-side worker that runs every case in ONE spawn (spawning costs ~2 s per world size)."""
from __future__ import annotations

import types
from typing import Any, Dict, List

import torch

from xclass.heads.base import HEADS
from xclass.losses import MARGINS

C, D, B, SEED = 11, 6, 8, 3
SIZES = {1: [8], 2: [5, 3], 3: [5, 2, 1]}  # ragged: {B, B - 3, 1} on 3 ranks
SGD = types.SimpleNamespace(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, head_lr=None)
ADAMW = types.SimpleNamespace(name="adamw", lr=1e-2, momentum=0.0, weight_decay=0.1, head_lr=None)

EXTRA = [
    dict(id="arcface_st", margin="arcface", params={"grad": "straight_through"}),
    dict(id="arcface_easy", margin="arcface", params={"easy_margin": True}),
    dict(id="arcface_cont", margin="arcface", params={"fallback": "continuous", "m": 1.2}),
    dict(id="combined_sphere", margin="combined", params={"m1": 1.35, "m2": 0.25, "m3": 0.1}),
    dict(id="sphereface_st_lam", margin="sphereface", params={"grad": "straight_through", "lam": 5.0, "m": 4.0}),
    dict(id="sphereface2_st", margin="sphereface2", params={"grad": "straight_through"}),
    dict(id="sphereface2_A", margin="sphereface2", params={"margin_type": "A", "m": 0.2, "r": 32.0}),
    dict(id="aam_warmup", margin="aam", params={"m_start": 0.0, "warmup_start": 0, "warmup_end": 4}),
    dict(id="softmax_ls", margin="softmax", params={"s": 3.0}, ls=0.1),
    dict(id="arcface_ls", margin="arcface", params={}, ls=0.1),
    dict(id="cosface_adamw", margin="cosface", params={}, optim="adamw"),
    dict(id="sphereface2_adamw", margin="sphereface2", params={}, optim="adamw"),
]
CASES: List[Dict[str, Any]] = [dict(id=n, margin=n, params={}) for n in MARGINS.names()] + EXTRA
PFC_CASES = [dict(id="pfc_arcface", margin="arcface", params={}, rate=0.5),
             dict(id="pfc_subcenter", margin="subcenter_arcface", params={"k": 2}, rate=0.4),
             dict(id="pfc_sphereface2", margin="sphereface2", params={}, rate=0.5)]
# labels in [0, 3) and a 5 % sample: every class >= 6 goes unsampled at both steps (seed 3 samples
# class 5 at step 0, nothing at step 1), so the last shard on 2 and 3 ranks holds NO active row
PFC_CASES += [dict(id=f"pfc_empty_{n}", margin=n, params=p, rate=0.05, low=True)
              for n, p in [("cosface", {}), ("subcenter_arcface", {"k": 2}), ("elastic_arc_plus", {}),
                           ("sphereface2", {}), ("intertopk_subcenter", {})]]


def head_cfg(case: Dict[str, Any], rate: float = 1.0) -> Any:
    return types.SimpleNamespace(name="margin", margin=case["margin"], margin_params=case["params"],
                                 sample_rate=rate, label_smoothing=case.get("ls", 0.0), params={})


def batch(i: int, step: int, low: bool = False):
    """Global batch (emb [B, D] fp32, labels [B] with ignored rows and labels on every shard;
    ``low``: labels in [0, 3) only, on the first shard)."""
    g = torch.Generator().manual_seed(1000 * i + step)
    emb = torch.randn(B, D, generator=g)
    labels = torch.randint(0, 3 if low else C, (B,), generator=g)
    labels[[2, 6]] = -100
    if not low:
        labels[0], labels[1] = 0, C - 1
    return emb, labels


def local(x: torch.Tensor, ws: int, rank: int) -> torch.Tensor:
    start = sum(SIZES[ws][:rank])
    return x[start:start + SIZES[ws][rank]]


def _grad_of(head) -> torch.Tensor:
    if head.active is None:
        return head.weight.grad.clone()
    rows, leaf = head.active
    return torch.zeros_like(head.weight).index_copy_(0, rows, leaf.grad)


def _one(ctx, i: int, case: Dict[str, Any], rate: float) -> Dict[str, Any]:
    head = HEADS.get("margin")(head_cfg(case, rate), num_classes=C, embedding_dim=D, ctx=ctx, seed=SEED)
    opt = head.make_optimizer(ADAMW if case.get("optim") == "adamw" else SGD)
    out: Dict[str, Any] = {"start": head.start, "stop": head.stop, "w0": head.weight.detach().clone()}
    for step in range(2):
        emb, labels = batch(i, step, case.get("low", False))
        e = local(emb, ctx.world_size, ctx.rank).clone().requires_grad_(True)
        res = head(e, local(labels, ctx.world_size, ctx.rank))
        res.loss.backward()
        out[f"loss{step}"] = res.loss.detach()
        out[f"rows{step}"] = None if head.active is None else head.active[0].clone()
        if step == 0:
            out["emb_grad"], out["w_grad"] = e.grad.clone(), _grad_of(head)
            out["b_grad"] = None if head.bias is None else head.bias.grad.clone()
        assert opt.step()
        out[f"w{step + 1}"] = head.weight.detach().clone()
        out[f"state{step + 1}"] = {k: v.clone() for k, v in opt.state.get("weight", {}).items()}
    return out


def skip_case(ctx) -> Dict[str, Any]:
    """One rank's shard gradient gets an inf: every rank must skip the step."""
    head = HEADS.get("margin")(head_cfg(dict(margin="arcface", params={})), num_classes=C, embedding_dim=D,
                               ctx=ctx, seed=SEED)
    opt = head.make_optimizer(SGD)
    emb, labels = batch(0, 0)
    head(local(emb, ctx.world_size, ctx.rank), local(labels, ctx.world_size, ctx.rank)).loss.backward()
    if ctx.rank == ctx.world_size - 1:
        head.weight.grad[0, 0] = float("inf")
    w0 = head.weight.detach().clone()
    stepped = opt.step()
    return {"stepped": bool(stepped), "unchanged": torch.equal(w0, head.weight.detach()),
            "step_count": int(head.step_count)}


def run_all(ctx) -> Dict[str, Any]:
    """Every case on this rank; called on gloo ranks or directly with ParallelContext.single()."""
    torch.manual_seed(0)  # heads must not depend on the global RNG; a fixed value keeps runs equal
    res = {c["id"]: _one(ctx, i, c, 1.0) for i, c in enumerate(CASES)}
    res.update({c["id"]: _one(ctx, 100 + i, c, c["rate"]) for i, c in enumerate(PFC_CASES)})
    res["skip"] = skip_case(ctx)
    return res
