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

from xclass.eval import VERIFICATION_PROTOCOLS
from xclass.eval.split import split_gallery
from xclass.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv: List[str]) -> None:
    from xclass.cli import main

    print(f"\n$ xclass {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    rc = main(argv)
    if rc:
        raise SystemExit(f"xclass demo: step failed with exit code {rc}: xclass {' '.join(argv)}")


def evaluate_task(task: str, data: str, run: str, work: str, quiet: bool = False) -> Dict[str, str]:
    """Export the index(es) the task's protocols need (``Task.protocols``), then evaluate.
    Returns the report directories by protocol (each holds metrics.json). ``quiet``: no plots,
    no progress bars."""
    protocols = get_task(task).protocols
    report = os.path.join(work, "report")
    flags = ["--no-plots", "--quiet"] if quiet else []
    if "xmc" in protocols:
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
    for protocol in (p for p in protocols if p in VERIFICATION_PROTOCOLS):  # pairs / trials
        pairs = os.path.join(data, get_task(task).pairs.file)
        out[protocol] = os.path.join(report, "verification")
        _run(["evaluate", "--protocol", protocol, "--embeddings", emb, "--pairs", pairs, "--out", out[protocol],
              *flags])
    if "ident" in protocols:
        out["ident"] = _identification(emb, data, work, os.path.join(report, "identification"), flags)
    return out


def _identification(emb: str, data: str, work: str, out: str, flags: List[str]) -> str:
    """Gallery/query split of the test embeddings, gallery index, ``evaluate --protocol ident``."""
    gq = os.path.join(data, "gallery_query.parquet")
    parts = split_gallery(emb, work, gallery_query=gq if os.path.exists(gq) else None, first_half=True,
                          overwrite=True)
    _run(["export-index", "--embeddings", parts["gallery"], "--out", os.path.join(work, "gallery_index"),
          "--overwrite"])
    _run(["evaluate", "--protocol", "ident", "--index", os.path.join(work, "gallery_index"),
          "--gallery", parts["gallery"], "--queries", parts["queries"], "--ks", "1,5", "--out", out, *flags])
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
        _run(["make-data", "--task", task, "--out", data, *get_task(task).demo_args])
    cfg = os.path.join(ROOT, get_task(task).configs, "cpu.yaml")
    _run(["train", "--config", cfg, "--workers", str(workers), f"data.path={data}",
          f"train.out_dir={run}", "train.resume=false", "train.overwrite=true"])
    evaluate_task(task, data, run, work)
    print(f"\n[xclass demo] {task} done in {time.perf_counter() - t0:.0f} s\n"
          f"  data:   {data}\n  run:    {run} (config.yaml, metrics.jsonl, loss.png, checkpoints/)\n"
          f"  report: {os.path.join(work, 'report')} (metrics.json, summary.md, plots)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(*(sys.argv[1:2] or ["runs/demo"])))
