"""Benchmark: one training step of the output layer vs the number of classes D.

Methods, measured side by side in one run (each (method, D) in a fresh child process so
that peak memory is that configuration's own):

* ``efficient``   the factored exact Z-loss head (``zloss_efficient``), float32 V, float64
                  d x d state; forward + loss + dL/dH + exact SGD update, no maintenance
                  (maintenance is timed separately: stabilise fixing 2 values, resync, unfactorise)
* ``dense_zloss`` the dense autograd Z-loss head (``zloss``) + torch SGD
* ``logsoftmax``  full softmax cross-entropy in plain torch: logits = H W^T, F.cross_entropy,
                  backward, SGD step

Prints one JSON object per line; writes a PNG of step time vs D beside ``--out``.
Example: ``python tools/bench_zloss.py --out runs/bench_zloss.jsonl``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable, Dict, List

METHODS = ("efficient", "dense_zloss", "logsoftmax")


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--D", default="1e4,3e4,1e5,3e5,1e6,3e6", help="comma-separated class counts")
    ap.add_argument("--d", type=int, default=128, help="embedding dim (the head adds a constant feature)")
    ap.add_argument("--m", type=int, default=256, help="batch size")
    ap.add_argument("--K", type=int, default=1, help="targets per example")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of the efficient head")
    ap.add_argument("--dense-steps", type=int, default=4, help="timed steps of the dense baselines")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dense-max-D", type=float, default=1e6, help="skip dense baselines above this D")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (pin on shared CPUs)")
    ap.add_argument("--out", default="runs/bench_zloss.jsonl")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "D"), help=argparse.SUPPRESS)
    return ap.parse_args()


def _time(step: Callable[[], None], warmup: int, n: int) -> List[float]:
    for _ in range(warmup):
        step()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _batch(D: int, a: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(0)
    H = torch.randn(a.m, a.d, generator=g)
    y = torch.randint(0, D, (a.m, a.K), generator=g)
    return H, (y[:, 0] if a.K == 1 else y)


def _head_step(name: str, D: int, a: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from xclass.parallel import ParallelContext
    from xclass.heads.base import HEADS
    import xclass.heads.zloss  # noqa: F401

    cfg = types.SimpleNamespace(name=name, params={"dtype": "float32", "init_std": 0.05, "stabilize_period": 0})
    head = HEADS.get(name)(cfg, num_classes=D, embedding_dim=a.d, ctx=ParallelContext.single(), seed=0)
    opt = head.make_optimizer(types.SimpleNamespace(name="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, head_lr=None))
    H, y = _batch(D, a)

    def step() -> None:
        emb = H.clone().requires_grad_(True)
        head(emb, y).loss.backward()
        opt.step()
        opt.zero_grad()

    n = a.steps if name == "zloss_efficient" else a.dense_steps
    rec: Dict[str, Any] = {"times": _time(step, a.warmup, n)}
    rec["peak_rss_step_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if name == "zloss_efficient":
        rec.update(_maintenance(head, a))
        rec["dense_fallback_steps"] = head.dense_steps
    return rec


def _maintenance(head: Any, a: argparse.Namespace) -> Dict[str, float]:
    """One-off cost of each maintenance operation (ms), on the trained head."""
    import torch

    from xclass.heads.zloss import maintenance as mt

    out = {}
    Uu, S, Vh = torch.linalg.svd(head.U)
    S2 = S.clone()
    S2[0], S2[-1] = 3.0, 0.2        # put two singular values out of band, W consistent below
    newU = Uu @ torch.diag(S2) @ Vh
    T = head.U @ torch.linalg.inv(newU)
    for lo in range(0, head.V.shape[0], 65536):   # blockwise: no D x d float64 copy
        head.V[lo:lo + 65536] = (head.V[lo:lo + 65536].double() @ T).float()
    head.U.copy_(newU)
    head.Uinv.copy_(torch.linalg.inv(newU))
    for key, fn in (("stabilise_2_values_ms", lambda: mt.stabilise(head)), ("resync_ms", lambda: mt.resync(head)),
                    ("unfactorise_ms", lambda: mt.unfactorise(head))):
        t0 = time.perf_counter()
        fn()
        out[key] = (time.perf_counter() - t0) * 1e3
    return out


def _logsoftmax_step(D: int, a: argparse.Namespace) -> Dict[str, Any]:
    import torch
    import torch.nn.functional as F

    W = torch.nn.Parameter(torch.randn(D, a.d + 1) * 0.05)
    opt = torch.optim.SGD([W], lr=0.01)
    H, y = _batch(D, a)
    ones = torch.ones(a.m, 1)

    def step() -> None:
        emb = H.clone().requires_grad_(True)
        logits = torch.cat([emb, ones], 1) @ W.t()
        if a.K == 1:
            loss = F.cross_entropy(logits, y)
        else:  # mean over the K positives of -log softmax
            loss = -(logits.log_softmax(1).gather(1, y)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    return {"times": _time(step, a.warmup, a.dense_steps)}


def _worker(method: str, D: int, a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "logsoftmax":
        rec = _logsoftmax_step(D, a)
    else:
        rec = _head_step("zloss_efficient" if method == "efficient" else "zloss", D, a)
    t = sorted(rec.pop("times"))
    rec.update(method=method, D=D, d=a.d, m=a.m, K=a.K, threads=a.threads, n_timed=len(t),
               median_ms=round(statistics.median(t), 3), p90_ms=round(t[int(0.9 * (len(t) - 1))], 3),
               peak_rss_mb=rec.pop("peak_rss_step_mb", None) or round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               rss_after_import_mb=round(rss0, 1))
    print(json.dumps(rec), flush=True)


def _plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for meth in METHODS:
        pts = sorted((r["D"], r["median_ms"]) for r in rows if r.get("method") == meth and "median_ms" in r)
        if pts:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=meth)
    ax.set_xlabel("number of classes D")
    ax.set_ylabel("median step time (ms)")
    ax.set_title("output-layer training step (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def main() -> None:
    a = _parse()
    if a.worker:
        _worker(a.worker[0], int(float(a.worker[1])), a)
        return
    Ds = [int(float(x)) for x in a.D.split(",")]
    rows: List[Dict[str, Any]] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    base = [sys.executable, os.path.abspath(__file__)] + [f"--{k}={v}" for k, v in
            (("d", a.d), ("m", a.m), ("K", a.K), ("steps", a.steps), ("dense-steps", a.dense_steps),
             ("warmup", a.warmup), ("threads", a.threads))]
    for D in Ds:
        for meth in METHODS:
            if meth != "efficient" and D > a.dense_max_D:
                rec: Dict[str, Any] = {"method": meth, "D": D, "skipped": f"D > --dense-max-D={a.dense_max_D:g}"}
            else:
                proc = subprocess.run(base + ["--worker", meth, str(D)], capture_output=True, text=True, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                rec = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
                    {"method": meth, "D": D, "error": proc.stderr.strip().splitlines()[-1:]}
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    rows.extend(_summary(rows))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(a.out + ".tmp", a.out)
    _plot(rows, os.path.splitext(a.out)[0] + ".png")


def _summary(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Speedups vs the dense baselines at each D, and the growth of the efficient step."""
    t = {(r["method"], r["D"]): r["median_ms"] for r in rows if "median_ms" in r}
    out = []
    eff = sorted(D for (m, D) in t if m == "efficient")
    for D in eff:
        rec = {"summary": "speedup", "D": D}
        for meth in METHODS[1:]:
            if (meth, D) in t:
                rec[f"x_vs_{meth}"] = round(t[(meth, D)] / t[("efficient", D)], 1)
        out.append(rec)
    if eff:
        out.append({"summary": "efficient_growth", "D_from": eff[0], "D_to": eff[-1],
                    "ratio": round(t[("efficient", eff[-1])] / t[("efficient", eff[0])], 2)})
    for rec in out:
        print(json.dumps(rec), flush=True)
    return out


if __name__ == "__main__":
    main()
