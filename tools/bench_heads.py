"""Benchmark classifier heads: one JSON object per line (stdout and ``--out``.jsonl), PNG beside it.

Each row runs in fresh spawned processes (gloo when world_size > 1) so peak memory is per row:
  step_ms   median of fwd + bwd + optimizer step (SGD momentum 0.9) over --steps timed steps
  cpu_ms    the same in process CPU time (steadier than wall time on a shared, loaded machine)
  peak_mb   per-rank peak RSS; head_mb = peak minus the RSS before the head was built
Rows: ``xclass:<margin>`` (sharded head; ``--impl fused,materialized`` gives one row per
``head.params.impl``, ``fused_update`` the fused head with ``update_in_backward: true``;
``--interleave`` adds a round-robin timing group at W = 1),
``dense:<margin>`` (single-process reference head),
``pml:arcface`` / ``pml:cosface`` (pytorch-metric-learning losses, same D, d, B), ``gemm_floor``
(only the three matmuls of a step) and ``insightface_fullmatrix`` (acos/cos over the whole
[B, C] matrix, straight-through, as arcface_torch does; a baseline for margin cost).

  python tools/bench_heads.py --preset targets --out bench/heads
  python tools/bench_heads.py --D 1e5,1e6 --d 128 --B 256 --world-sizes 1,2 --sample-rates 1,0.1 --out /tmp/h
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from heads_rank import _rank_main  # noqa: E402 (tools/ is on the path)


def _avail_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 1024
    return float("nan")


def formula_mb(spec: Dict[str, Any]) -> float:
    """Predicted per-rank head memory (sharded head, SGD momentum), MiB, with C_l = D / W rows and
    C_a = r C_l active rows: W + momentum 8 C_l d; active rows (copy, normalised copy, gradient)
    12 C_a d, or at r = 1 (normalised copy, W.grad) 8 C_l d; ONE fp32 [B_g, C_a] buffer (scores ->
    logits -> softmax -> gradient, all in place) 4 B_g C_a; sampling keys 24 C_l; batch O(B_g d)."""
    cl = math.ceil(spec["D"] / spec["ws"])
    ca = cl * spec["r"] if spec["r"] < 1 else cl
    rows = 12 * ca * spec["d"] + 24 * cl if spec["r"] < 1 else 8 * cl * spec["d"]
    return (8 * cl * spec["d"] + rows + 4 * spec["B"] * ca + 16 * spec["B"] * spec["d"]) / 2**20


def _formula(spec: Dict[str, Any]) -> float:
    """formula_mb, or for the fused head xclass.heads.fused.memory_bytes (MiB)."""
    if spec.get("impl") not in ("fused", "fused_update"):
        return formula_mb(spec)
    from xclass.heads.fused import memory_bytes

    return memory_bytes(spec["B"], math.ceil(spec["D"] / spec["ws"]), spec["d"], r=spec["r"],
                        update_in_backward=spec.get("impl") == "fused_update") / 2**20


def run_row(spec: Dict[str, Any]) -> Any:
    """One row (dict), or a list of rows for an interleaved timing group."""
    from xclass.parallel.launch import free_port

    spec = dict(spec)
    # one thread per rank: on a shared 2-core machine, OpenMP barriers with a descheduled
    # thread made 2-thread timings erratic (several x); pass "threads" to override
    spec.setdefault("threads", 1)
    row = {"head": spec["head"], "D": spec["D"], "d": spec["d"], "B": spec["B"], "world_size": spec["ws"],
           "sample_rate": spec["r"], "threads_per_rank": spec["threads"],
           "malloc": spec.get("malloc", "system"), "impl": spec.get("impl")}
    if spec.get("need_mb") and _avail_mb() < spec["need_mb"]:
        return {**row, "skipped": f"needs ~{spec['need_mb']:.0f} MiB, {_avail_mb():.0f} MiB available"}
    ctxm = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(spec["ws"])]
        procs = [ctxm.Process(target=_rank_main, args=(spec, r, spec["ws"], port, outs[r]))
                 for r in range(spec["ws"])]
        for p in procs:
            p.start()
        for p in procs:
            p.join(3600)
        res = {}
        for r, o in enumerate(outs):
            if not os.path.exists(o):
                return {**row, "error": f"rank {r} died (exit code {procs[r].exitcode}; killed for memory?)"}
            with open(o) as f:
                res[r] = json.load(f)
    errs = [v["error"] for v in res.values() if "error" in v]
    if errs:
        return {**row, "error": errs[0]}
    if spec.get("group"):  # timing-only rows; memory comes from the single-head rows
        return [{**row, "head": m["head"], "sample_rate": m.get("r", spec["r"]), "timing": "interleaved",
                 "impl": m.get("impl"),
                 "step_ms": round(statistics.median(res[0]["times"][j]), 2),
                 "cpu_ms": round(statistics.median(res[0]["cpu"][j]), 2)} for j, m in enumerate(spec["group"])]
    times = [statistics.median(res[r]["times"][0]) for r in sorted(res)]
    cpu = [statistics.median(res[r]["cpu"][0]) for r in sorted(res)]
    return {**row, "step_ms": round(max(times), 2), "cpu_ms": round(max(cpu), 2),
            "peak_mb_per_rank": [round(res[r]["peak_mb"]) for r in sorted(res)],
            "head_mb_per_rank": [round(res[r]["peak_mb"] - res[r]["base_mb"]) for r in sorted(res)],
            "formula_mb_per_rank": round(_formula(spec)) if spec["head"].startswith("xclass") else None}


def _spec(head: str, D: int, ws: int = 1, r: float = 1.0, **kw: Any) -> Dict[str, Any]:
    s = {"head": head, "D": int(D), "d": kw.pop("d", 128), "B": kw.pop("B", 256), "ws": ws, "r": r,
         "steps": kw.pop("steps", 5), "warmup": kw.pop("warmup", 2)}
    if head.startswith("xclass:") or head.startswith("dense:"):
        s["margin"] = head.split(":", 1)[1]
    s.update(kw)
    return s


def _group(D: float, members: List[Dict[str, Any]], **kw: Any) -> Dict[str, Any]:
    return {**_spec("group", D, **kw), "group": [{**_spec(m["head"], D), **m} for m in members]}


def preset_targets(big: bool) -> List[Dict[str, Any]]:
    """The rows behind the targets in docs/heads.md: interleaved timing
    groups at W = 1, then one process per row for memory (and multi-rank timing)."""
    heads_1e5 = ("gemm_floor", "xclass:arcface", "xclass:cosface", "dense:arcface", "pml:arcface",
                 "pml:cosface", "insightface_fullmatrix")
    rows = [_group(1e5, [{"head": h} for h in heads_1e5], steps=7)]
    rows.append(_group(1e6, [{"head": "xclass:arcface"}, {"head": "xclass:cosface"},
                             {"head": "xclass:arcface", "r": 0.1}, {"head": "insightface_fullmatrix"}], steps=3))
    mem = dict(steps=1, warmup=1)
    rows += [_spec(h, 1e5, **mem) for h in ("xclass:arcface", "dense:arcface", "pml:arcface")]
    rows += [_spec("pml:arcface", D, **mem) for D in (2e5, 4e5)]
    rows += [_spec("xclass:arcface", 1e6, **mem), _spec("xclass:arcface", 1e6, r=0.1, **mem)]
    rows += [_spec("xclass:arcface", 1e6, ws=2, r=1.0, steps=2), _spec("xclass:arcface", 1e6, ws=2, r=0.1, steps=3)]
    rows += [_spec("xclass:arcface", 4e6, ws=2, r=0.1, steps=2)]
    if big:  # run once, late: about 13 GiB on a shared 24 GiB machine
        rows.append(_spec("xclass:arcface", 1e7, ws=2, r=0.1, steps=2, need_mb=15000))
    return rows


def sweep(a: argparse.Namespace) -> List[Dict[str, Any]]:
    fl = lambda s, t: [t(float(x)) for x in s.split(",")]  # noqa: E731
    rows = []
    for D in fl(a.D, int):
        for ws in fl(a.world_sizes, int):
            for r in fl(a.sample_rates, float):
                heads = [dict(head=f"xclass:{h}", impl=i or None) for h in a.heads.split(",")
                         for i in a.impl.split(",")]
                if a.interleave and ws == 1 and len(heads) > 1:  # one process, round-robin timing
                    members = [{**h, "r": r, "d": a.d, "B": a.B} for h in heads]
                    rows.append(_group(D, members, d=a.d, B=a.B, steps=a.steps))
                rows += [_spec(h["head"], D, ws, r, d=a.d, B=a.B, steps=a.steps, impl=h["impl"]) for h in heads]
        for base in [b for b in a.baselines.split(",") if b]:
            rows.append(_spec({"dense": "dense:arcface", "pml": "pml:arcface", "pml_cosface": "pml:cosface",
                               "gemm": "gemm_floor", "fullmatrix": "insightface_fullmatrix"}[base], D,
                              d=a.d, B=a.B, steps=a.steps))
    return rows


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r["head"], r["world_size"], r["sample_rate"]) for r in rows if "step_ms" in r})
    for h, ws, sr in keys:
        pts = sorted((r["D"], r["step_ms"]) for r in rows if "step_ms" in r and
                     (r["head"], r["world_size"], r["sample_rate"]) == (h, ws, sr))
        ax.plot(*zip(*pts), marker="o", label=f"{h} W={ws} r={sr}")
    ax.set(xscale="log", yscale="log", xlabel="classes D", ylabel="step ms (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["targets"], help="the target rows of docs/heads.md")
    ap.add_argument("--big", action="store_true", help="with --preset: add the D=1e7, W=2 row (~13 GiB)")
    ap.add_argument("--D", default="1e5", help="comma list of class counts")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--B", type=int, default=256, help="global batch")
    ap.add_argument("--world-sizes", default="1")
    ap.add_argument("--sample-rates", default="1")
    ap.add_argument("--heads", default="arcface", help="comma list of registered margins")
    ap.add_argument("--impl", default="",
                    help="comma list of head.params.impl values for the xclass rows: fused,materialized,auto "
                         "(empty: the head's default); fused_update = fused with update_in_backward")
    ap.add_argument("--interleave", action="store_true",
                    help="W=1: also time the xclass rows round-robin in one process (fair ratios on a busy box)")
    ap.add_argument("--baselines", default="dense,pml,gemm", help="dense,pml,pml_cosface,gemm,fullmatrix")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the --steps timed ones")
    ap.add_argument("--out", help="path prefix: writes <out>.jsonl and <out>.png")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per rank (1: steady timings on a shared box; cores/W: the machine's speed)")
    ap.add_argument("--malloc", choices=["system", "heap"], default="system",
                    help="heap: every row's processes keep large blocks on glibc's heap as `xclass train` does "
                         "(xclass/perf.py); system: glibc's default (a fresh mmap per large tensor)")
    a = ap.parse_args(argv)
    rows_spec = preset_targets(a.big) if a.preset else sweep(a)
    for spec in rows_spec:
        if not a.preset:
            spec["warmup"] = a.warmup
        spec.setdefault("threads", a.threads)
        spec.setdefault("malloc", a.malloc)
    out: List[Dict[str, Any]] = []
    for spec in rows_spec:
        got = run_row(spec)
        for row in got if isinstance(got, list) else [got]:
            out.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".jsonl.tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in out)
        os.replace(a.out + ".jsonl.tmp", a.out + ".jsonl")
        plot(out, a.out + ".png")


if __name__ == "__main__":
    main()
