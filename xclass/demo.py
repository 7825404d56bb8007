"""``xclass demo``: the main job end to end on generated data, through the public CLI.

make-data -> train (N Ray workers) -> export-index -> evaluate, printing each command as a
user would type it, then the metrics table and where everything was written.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Dict, List

from xclass.eval.split import split_gallery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: make-data arguments of each task's demo dataset (small: minutes on a 2-core CPU).
DEMO_DATA: Dict[str, List[str]] = {
    "face": ["--num-classes", "300", "--rows-per-class", "20", "--test-classes", "60",
             "--opt", "image_size=16"],
    "speaker": ["--num-classes", "120", "--rows-per-class", "16", "--test-classes", "30",
                "--opt", "max_frames=80", "--opt", "min_frames=40"],
    "quic": ["--num-classes", "300", "--rows-per-class", "20", "--test-classes", "60"],
    "xmc": ["--num-classes", "2000", "--num-rows", "20000", "--num-test-rows", "2000"],
}


def _run(argv: List[str]) -> None:
    from xclass.cli import main

    print(f"\n$ xclass {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    rc = main(argv)
    if rc:
        raise SystemExit(f"xclass demo: step failed with exit code {rc}: xclass {' '.join(argv)}")


def evaluate_task(task: str, data: str, run: str, work: str, quiet: bool = False) -> Dict[str, str]:
    """Export the index(es) the task's protocol needs, then evaluate. Returns the report
    directories by protocol (each holds metrics.json). ``quiet``: no plots, no progress bars."""
    report = os.path.join(work, "report")
    flags = ["--no-plots", "--quiet"] if quiet else []
    if task == "xmc":
        _run(["export-index", "--run", run, "--head", "--out", os.path.join(work, "label_index"), "--overwrite"])
        _run(["export-index", "--run", run, "--split", "test", "--out", os.path.join(work, "query_index"),
              "--overwrite"])
        _run(["evaluate", "--protocol", "xmc", "--index", os.path.join(work, "label_index"),
              "--queries", os.path.join(work, "query_index", "test_embeddings.parquet"),
              "--train-labels", os.path.join(data, "train.parquet"), "--ks", "1,3,5", "--out", report, *flags])
        return {"xmc": report}
    out: Dict[str, str] = {}
    _run(["export-index", "--run", run, "--split", "test", "--out", os.path.join(work, "test_index"),
          "--overwrite"])
    emb = os.path.join(work, "test_index", "test_embeddings.parquet")
    if task in ("face", "speaker"):
        pairs = os.path.join(data, "pairs.parquet" if task == "face" else "trials.parquet")
        out[task] = os.path.join(report, "verification")
        _run(["evaluate", "--protocol", task, "--embeddings", emb, "--pairs", pairs, "--out", out[task], *flags])
    gq = os.path.join(data, "gallery_query.parquet")
    parts = split_gallery(emb, work, gallery_query=gq if os.path.exists(gq) else None, first_half=True,
                          overwrite=True)
    _run(["export-index", "--embeddings", parts["gallery"], "--out", os.path.join(work, "gallery_index"),
          "--overwrite"])
    out["ident"] = os.path.join(report, "identification")
    _run(["evaluate", "--protocol", "ident", "--index", os.path.join(work, "gallery_index"),
          "--gallery", parts["gallery"], "--queries", parts["queries"], "--ks", "1,5", "--out", out["ident"],
          *flags])
    return out


def run_demo(out: str, workers: int = 2, task: str = "face") -> int:
    """Run the demo for ``task`` under ``out``; returns 0 on success."""
    t0 = time.perf_counter()
    out = os.path.abspath(out)
    data = os.path.join(out, "data", task)
    run = os.path.join(out, "run", task)
    work = os.path.join(out, "eval", task)
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(os.path.join(data, "meta.json")):
        _run(["make-data", "--task", task, "--out", data, *DEMO_DATA[task]])
    cfg = os.path.join(ROOT, "configs", task, "cpu.yaml")
    _run(["train", "--config", cfg, "--workers", str(workers), f"data.path={data}",
          f"train.out_dir={run}", "train.resume=false", "train.overwrite=true"])
    evaluate_task(task, data, run, work)
    print(f"\n[xclass demo] {task} done in {time.perf_counter() - t0:.0f} s\n"
          f"  data:   {data}\n  run:    {run} (config.yaml, metrics.jsonl, loss.png, checkpoints/)\n"
          f"  report: {os.path.join(work, 'report')} (metrics.json, summary.md, plots)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(*(sys.argv[1:2] or ["runs/demo"])))
