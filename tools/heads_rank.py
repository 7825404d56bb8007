"""One rank of a ``tools/bench_heads.py`` row, run in a spawned process: builds the head (or a
baseline) for its share of the batch, times its steps and writes the result to a file."""
from __future__ import annotations

import json
import os
import resource
import time
import types
from typing import Any, Dict, List


def head_params(impl: str) -> Dict[str, Any]:
    """head.params of a bench row's ``impl``: a ``head.params.impl`` value ("" = the head's
    default), or ``fused_update``: the fused head with ``update_in_backward`` (the optimizer step
    applied chunk by chunk in the backward). Shared with tools/bench_gpu.py."""
    if impl == "fused_update":
        return {"impl": "fused", "update_in_backward": True}
    return {"impl": impl} if impl else {}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class FullMatrixArcFace:
    """insightface arcface_torch style: acos and cos over the whole [B, C] matrix under no_grad."""

    s, m, normalized, objective, sub_centers, needs_target_cos = 64.0, 0.5, True, "softmax", 1, False

    def __call__(self, cos, target, aux):
        import torch

        with torch.no_grad():
            theta = cos.float().clamp(-1, 1).acos()
            rows = (target >= 0).nonzero().squeeze(1)
            theta[rows, target[rows]] += self.m
            shifted = theta.cos_()
        return self.s * (cos.float() + (shifted - cos.float()).detach())


def _build(spec: Dict[str, Any], ctx: Any):
    """(step closure, torch) for one row on one rank."""
    import torch

    from xclass.heads.base import HEADS
    from xclass.heads.sharded import ShardedMarginHead

    D, d, ws = spec["D"], spec["d"], ctx.world_size
    b_local = spec["B"] // ws + (1 if ctx.rank < spec["B"] % ws else 0)
    g = torch.Generator().manual_seed(1 + ctx.rank)
    emb = torch.randn(b_local, d, generator=g).requires_grad_(True)
    labels = torch.randint(0, D, (b_local,), generator=g)
    optim = types.SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, head_lr=None)
    impl = spec["head"]
    if impl == "gemm_floor":
        w = torch.randn(D, d) * 0.01
        gr = torch.randn(spec["B"], D)
        e = torch.randn(spec["B"], d)

        def step():
            e @ w.t(), gr @ w, gr.t() @ e
        return step
    if impl.startswith("pml:"):
        from pytorch_metric_learning import losses as pml

        loss_fn = pml.ArcFaceLoss(D, d) if impl == "pml:arcface" else pml.CosFaceLoss(D, d)
        opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step():
            loss_fn(emb, labels).backward()
            opt.step()
            opt.zero_grad()
        return step
    cfg = types.SimpleNamespace(name="margin", margin=spec.get("margin", "arcface"), margin_params={},
                                sample_rate=spec["r"], label_smoothing=0.0, params=head_params(spec.get("impl", "")))
    if impl == "insightface_fullmatrix":
        head = ShardedMarginHead(FullMatrixArcFace(), num_classes=D, embedding_dim=d, ctx=ctx, sample_rate=spec["r"])
    else:
        head = HEADS.get("softmax_dense" if impl.startswith("dense") else "margin")(
            cfg, num_classes=D, embedding_dim=d, ctx=ctx, seed=0)
    opt = head.make_optimizer(optim)

    def step():
        head(emb, labels).loss.backward()
        opt.step()
        opt.zero_grad()
        emb.grad = None
    return step


def _rank_main(spec: Dict[str, Any], rank: int, ws: int, port: int, out: str) -> None:
    """Runs one rank; writes its result to ``out`` (a file, not a Queue: clean_exit's os._exit
    would drop a Queue's unflushed feeder thread)."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("malloc") == "heap":
        from xclass.perf import tune_malloc

        tune_malloc()
    from xclass.parallel import ParallelContext
    from xclass.parallel.launch import clean_exit, init_gloo

    ctx = ParallelContext()
    if ws > 1:
        import torch.distributed as dist

        init_gloo(rank, ws, port)
        ctx = ParallelContext(rank=rank, world_size=ws, group=dist.group.WORLD)
    base = _rss_mb()
    try:
        # a "group" times several heads round-robin in one process, so load from other users
        # of a shared machine hits every implementation alike
        members = spec.get("group") or [spec]
        steps = [_build({**spec, **m}, ctx) for m in members]
        times: List[List[float]] = [[] for _ in members]
        cpu: List[List[float]] = [[] for _ in members]  # process CPU time: steadier on a loaded box
        for i in range(spec["warmup"] + spec["steps"]):
            for j, step in enumerate(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                if i >= spec["warmup"]:
                    times[j].append((time.perf_counter() - t0) * 1e3)
                    cpu[j].append((time.process_time() - c0) * 1e3)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res: Dict[str, Any] = {"times": times, "cpu": cpu, "peak_mb": peak, "base_mb": base}
    except Exception as exc:  # noqa: BLE001 - the row reports the failure (e.g. out of memory)
        res = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    with open(out + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(out + ".tmp", out)
    clean_exit(0, destroy=ws > 1)
