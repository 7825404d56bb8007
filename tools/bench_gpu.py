"""GPU benchmark: one JSON row per measurement, appended to tools/results/gpu_<date>.jsonl
(and printed). Part of ``make gpu-check``; needs neither Ray, DeepSpeed nor faiss.

Rows (every row has ``bench``, ``D``, ``dtype``, ``r``, ``step_ms``, ``peak_gb``, ``device``):
  arcface     sharded ArcFace head (``head.params.impl`` = ``impl``), fwd + bwd + SGD step at
              d=512, B=1024, r = 1 and 0.1, fp32 and bf16 (autocast around the head forward);
              ``floor_ms`` = the three-GEMM floor of the same shape and dtype (emb @ W^T,
              dlogits @ W, dlogits^T @ emb over the r*D scored classes), ``x_floor`` = step / floor
  gemm_floor  that floor as its own row
  fused       (opt-in, ``--only fused``) ArcFace ``impl: fused`` at D = 1e5, 1e6, 1e7, 2e7, bf16,
              r = 1, with the optimizer step and peak_gb; ``impl: fused_update`` the same with
              ``update_in_backward: true`` (the SGD step per class chunk in the backward: peak
              W + momentum + chunks); the materialised head beside them up to D = 1e6;
              ``x_floor`` against the bf16 floor row of the same D
  zloss       ``zloss_efficient`` vs ``logsoftmax`` (full softmax CE over D classes), d=128,
              m=256; ``speedup`` on the zloss_efficient row
  recipe      configs/face/gpu_recipe.yaml on one device (B=256, bf16): ``encoder_harness`` =
              encoder fwd + bwd + step on one decoded batch in this process (no loop, no data
              path); ``train_D=<n>`` = ``xclass train --gpu`` itself (samples_per_s from its
              metrics.jsonl, windows after the first) with n classes (n = 100: the head is
              negligible, so ``loop_overhead`` = 1 - its samples/s / the harness's is the cost of
              the loop, data path and logging; n = 1e6: the recipe's head)
Timing: CUDA events (perf_counter on the CPU), median of ``--steps`` after ``--warmup``.
Peak: torch.cuda.max_memory_allocated per row (process max RSS on the CPU). An OOM is caught
and written as a row with ``oom: true``.

  python tools/bench_gpu.py                      # full sizes on cuda:0
  python tools/bench_gpu.py --device cpu --quick # tiny sizes (the smoke test runs this)
  python tools/bench_gpu.py --impl fused,materialized --only arcface
  python tools/bench_gpu.py --only fused          # the fused head rows (opt-in)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import statistics
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

SGD = types.SimpleNamespace(name="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, head_lr=None)


def _ctx(device: torch.device):
    from xclass.parallel import ParallelContext

    return ParallelContext.single(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(step: Callable[[], Any], device: torch.device, warmup: int, n: int) -> float:
    """Median milliseconds of ``step`` (CUDA events on a GPU)."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(n):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _reset_peak(device: torch.device) -> None:
    """Free the previous measurement's tensors and restart the peak (CUDA). On the CPU the peak is
    the process high-water mark, which nothing resets, so no collection is run there (a full
    ``gc.collect`` costs ~0.15 s per measurement in a large process such as the test run)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


_DEADLINE = [float("inf")]  # perf_counter time after which no new measurement starts (--budget-s)


def over_budget() -> bool:
    return time.perf_counter() > _DEADLINE[0]


def measured(base: Dict[str, Any], device: torch.device, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``base`` + what ``fn`` measures + peak memory; an out-of-memory error becomes a row, and
    past the ``--budget-s`` deadline a row says ``skipped: budget`` instead of measuring."""
    row = dict(base, device=str(device))
    if over_budget():
        return dict(row, step_ms=None, peak_gb=None, skipped="budget")
    _reset_peak(device)
    try:
        row.update(fn())
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) and "alloc" not in msg \
                and "out of memory" not in msg:
            raise
        row.update(oom=True, step_ms=None, error=msg[:200])
    row["peak_gb"] = _peak_gb(device)
    _reset_peak(device)
    return row


# ---- margin head vs the three-GEMM floor ----------------------------------------------------
def gemm_floor(D: int, d: int, B: int, dtype: torch.dtype, device: torch.device, a) -> float:
    w = torch.randn(D, d, device=device, dtype=dtype) * 0.01
    e = torch.randn(B, d, device=device, dtype=dtype)
    g = torch.randn(B, D, device=device, dtype=dtype)
    return time_ms(lambda: (e @ w.t(), g @ w, g.t() @ e), device, a.warmup, a.steps)


def arcface_step(head: Any, D: int, d: int, B: int, dtype: torch.dtype, device: torch.device, a) -> float:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(B, d, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, D, (B,), generator=g).to(device)
    opt = head.make_optimizer(SGD)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = head(emb, labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        emb.grad = None

    return time_ms(step, device, a.warmup, a.steps)


def build_margin_head(D: int, d: int, r: float, impl: str, device: torch.device) -> Any:
    from xclass import components
    from xclass.heads.base import HEADS

    components.load_all()
    # impl explicit: the default (auto) would switch to fused on large D
    cfg = types.SimpleNamespace(name="margin", margin="arcface", margin_params={"s": 64.0, "m": 0.5},
                                sample_rate=r, label_smoothing=0.0, params=head_params(impl))
    head = HEADS.get("margin")(cfg, num_classes=D, embedding_dim=d, ctx=_ctx(device), seed=0)
    return head.to(device)


def bench_arcface(a, device: torch.device) -> List[Dict[str, Any]]:
    """Per (D, r, impl) one head build (on the CPU it is the slow part), timed in fp32 and bf16."""
    rows: List[Dict[str, Any]] = []
    for D in a.arc_D:
        for r in (1.0, 0.1):
            floors = {}
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                n = max(1, int(r * D))
                row = measured({"bench": "gemm_floor", "D": D, "dtype": name, "r": r, "d": a.d, "B": a.B},
                               device, lambda: {"step_ms": gemm_floor(n, a.d, a.B, dtype, device, a)})
                floors[name] = row["step_ms"]
                rows.append(row)
                emit([row], a)
            for impl in a.impl:
                rows += _arcface_rows(a, device, D, r, impl, floors)
    return rows


FP32_BF16 = (("fp32", torch.float32), ("bf16", torch.bfloat16))


def _arcface_rows(a, device: torch.device, D: int, r: float, impl: str, floors: Dict[str, Any],
                  dtypes=FP32_BF16, bench: str = "arcface") -> List[Dict]:
    base = {"bench": bench, "D": D, "r": r, "impl": impl, "d": a.d, "B": a.B}
    holder: Dict[str, Any] = {}

    def build() -> Dict[str, Any]:
        t0 = time.perf_counter()
        holder["head"] = build_margin_head(D, a.d, r, impl, device)
        return {"build_s": round(time.perf_counter() - t0, 2)}

    built = measured(dict(base, dtype="fp32"), device, build)
    rows = []
    for name, dtype in dtypes:
        if "head" not in holder:  # the build itself ran out of memory
            rows.append(dict(built, dtype=name))
            emit(rows[-1:], a)
            continue

        def step(dtype=dtype, name=name) -> Dict[str, Any]:
            ms = arcface_step(holder["head"], D, a.d, a.B, dtype, device, a)
            f = floors.get(name)
            return {"step_ms": ms, "floor_ms": f, "x_floor": ms / f if f else None}

        rows.append(measured(dict(base, dtype=name, build_s=built.get("build_s")), device, step))
        emit(rows[-1:], a)
    holder.clear()
    return rows




def bench_fused(a, device: torch.device) -> List[Dict[str, Any]]:
    """Rows ``fused``: ArcFace with ``impl`` fused (Triton kernels on CUDA) at D = 1e5, 1e6, 1e7,
    2e7, bf16 (autocast), r = 1, fwd + bwd + SGD-momentum step, peak_gb, ``x_floor`` against the
    bf16 three-GEMM floor of the same D; ``fused_update`` (update_in_backward) beside it; the
    materialised head alongside while D <= 1e6 (beyond, its fp32 [B, D] buffer alone is 41 GB
    at 1e7)."""
    rows: List[Dict[str, Any]] = []
    for D in a.fused_D:
        floor = measured({"bench": "gemm_floor", "D": D, "dtype": "bf16", "r": 1.0, "d": a.d, "B": a.B}, device,
                         lambda D=D: {"step_ms": gemm_floor(D, a.d, a.B, torch.bfloat16, device, a)})
        emit([floor], a)
        rows.append(floor)
        for impl in ("fused", "fused_update", "materialized") if D <= a.fused_D[1] else ("fused", "fused_update"):
            rows += _arcface_rows(a, device, D, 1.0, impl, {"bf16": floor["step_ms"]},
                                  dtypes=(("bf16", torch.bfloat16),), bench="fused")
    return rows


def emit(rows: List[Dict[str, Any]], a) -> None:
    """Print and append rows to ``a.out`` (one JSON object per line)."""
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "a") as f:
        for r in rows:
            line = json.dumps(r)
            print(line, flush=True)
            f.write(line + "\n")


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--only", default="arcface,zloss,recipe", help="comma list of benches")
    ap.add_argument("--impl", default="materialized",
                    help="comma list of margin-head implementations (head.params.impl; 'materialized' = default)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (median)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--recipe-steps", type=int, default=None, help="steps of each xclass train run")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new measurement after this many seconds (the rest become 'skipped' rows)")
    ap.add_argument("--out", default=None, help="JSONL path (default tools/results/gpu_<UTC date>.jsonl; with "
                    "--device cpu runs/bench_gpu_cpu_<UTC date>.jsonl, so a rehearsal leaves the results alone)")
    a = ap.parse_args(argv)
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    rehearsal = a.device == "cpu"
    a.out = a.out or os.path.join(ROOT, *(("runs", f"bench_gpu_cpu_{day}.jsonl") if rehearsal else
                                          ("tools", "results", f"gpu_{day}.jsonl")))
    a.impl = [s for s in a.impl.split(",") if s]
    a.only = [s for s in a.only.split(",") if s]
    q = a.quick
    a.steps = a.steps or (3 if q else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 3)
    a.arc_D = [1000, 4000] if q else [10**5, 10**6, 10**7]
    a.fused_D = [1000, 4000, 8000] if q else [10**5, 10**6, 10**7, 2 * 10**7]
    a.d, a.B = (32, 64) if q else (512, 1024)
    a.z_D = [1000, 4000] if q else [10**5, 10**6, 10**7]
    a.zd, a.zm = (16, 32) if q else (128, 256)
    a.recipe_steps = a.recipe_steps or (6 if q else 60)
    a.recipe_log, a.recipe_timeout = (2 if q else 10), 600
    a.recipe_rows = 400 if q else 256 * 24  # 24 steps per epoch at the recipe's B = 256
    return a


sys.modules.setdefault("bench_gpu", sys.modules[__name__])  # one module (and deadline) as a script too
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu_recipe import bench_recipe  # noqa: E402  (face GPU recipe: harness vs xclass train)
from bench_gpu_zloss import bench_zloss  # noqa: E402  (Z-loss efficient vs log-softmax)
from heads_rank import head_params  # noqa: E402  (impl labels -> head.params, fused_update included)


def main(argv: Optional[List[str]] = None) -> int:
    a = parse(argv)
    if a.budget_s is not None:
        _DEADLINE[0] = time.perf_counter() + a.budget_s
    device = torch.device(a.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if "zloss" in a.only:  # cheapest first; the D = 1e7 head builds come last
        bench_zloss(a, device)
    if "recipe" in a.only:
        emit(bench_recipe(a, device, measured), a)
    if "arcface" in a.only:
        bench_arcface(a, device)
    if "fused" in a.only:  # opt-in (--only fused): the 2e7 build alone takes minutes
        bench_fused(a, device)
    print(f"[bench_gpu] rows appended to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
