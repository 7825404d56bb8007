"""Scaling of one training job over 1, 2, ... workers (Ray workers for N > 1, in-process for 1).

Each worker count runs in a fresh subprocess (`xclass train`), the same config and global batch;
prints one JSON line per worker count: samples/s (global, median over logged intervals after the
first), per-rank head memory, time to first step (launch -> first logged step, including Ray
start-up), wall time. Writes scaling.png beside the JSON when --out is given.

    python tools/bench_scaling.py --workers 1 2 --steps 60
    python tools/bench_scaling.py --config configs/face/cpu.yaml --workers 1 2 4 8 --gpu   # on a GPU node
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _make_data(path: str, num_classes: int) -> None:
    if not os.path.exists(os.path.join(path, "meta.json")):
        subprocess.run([os.path.join(BIN, "xclass"), "make-data", "--task", "face", "--out", path,
                        "--num-classes", str(num_classes), "--rows-per-class", "20", "--opt", "image_size=16",
                        "--no-progress"], check=True, capture_output=True)


def run_one(args: argparse.Namespace, data: str, workers: int, work: str) -> Dict[str, Any]:
    out = os.path.join(work, f"w{workers}")
    cmd = [os.path.join(BIN, "xclass"), "train", "--config", args.config, "--workers", str(workers),
           f"data.path={data}", f"train.out_dir={out}", f"train.max_steps={args.steps}",
           f"train.log_every={args.log_every}", f"data.batch_size={args.batch}", "train.resume=false",
           "train.progress=false", f"cluster.cpus_per_worker={args.cpus_per_worker}"]
    if args.gpu:
        cmd.append("--gpu")
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cuda" if args.gpu else "cpu"),
               RAY_AUTH_MODE="disabled", OMP_NUM_THREADS=str(args.cpus_per_worker))
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        return {"workers": workers, "error": proc.stderr[-2000:]}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    sps = [r["samples_per_s"] for r in rows[1:]] or [rows[-1]["samples_per_s"]]
    return {"bench": "scaling", "config": os.path.relpath(args.config, ROOT), "workers": workers,
            "global_batch": args.batch, "steps": args.steps, "samples_per_s": round(statistics.median(sps), 1),
            "head_mem_mb_per_rank": round(rows[-1]["head_mem_mb"], 3),
            "time_to_first_step_s": round(rows[0]["time"] - t0, 2), "wall_s": round(wall, 1),
            "device": "gpu" if args.gpu else "cpu", "cores": os.cpu_count()}


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot([r["workers"] for r in ok], [r["samples_per_s"] for r in ok], "o-")
    ax[0].set(xlabel="workers", ylabel="samples/s (global)", title="throughput")
    ax[1].bar([str(r["workers"]) for r in ok], [r["time_to_first_step_s"] for r in ok])
    ax[1].set(xlabel="workers", ylabel="seconds", title="time to first step")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "face", "cpu.yaml"))
    ap.add_argument("--data", default=None, help="dataset dir (default: generate 16 px face data)")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--out", default=None, help="directory for scaling.jsonl + scaling.png")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="xclass-scaling-")
    data = args.data or os.path.join(work, "data")
    _make_data(data, args.num_classes)
    rows = []
    for w in args.workers:
        row = run_one(args, data, w, work)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scaling.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        plot(rows, os.path.join(args.out, "scaling.png"))


if __name__ == "__main__":
    main()
