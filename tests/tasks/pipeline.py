"""One task end to end through the public CLI (``xclass.cli.main``): make-data -> train ->
export-index -> evaluate, and the same chain for a random-init encoder.

The random-init baseline trains 1 step with ``optim.lr=0`` (encoder and head unchanged; only
BatchNorm running statistics see one batch), so it goes through exactly the same export and
evaluation code as the trained run. Used by tests/tasks/ and to measure the numbers in docs/tasks.md
(``python -m tests.tasks.pipeline TASK WORKDIR [--full]``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UNTRAINED = ["optim.lr=0", "optim.head_lr=0", "optim.warmup_steps=0", "train.max_steps=1"]


def cli(argv: Sequence[str]) -> None:
    from xclass.cli import main

    rc = main(list(argv))
    if rc:
        raise RuntimeError(f"xclass {' '.join(argv)} -> exit code {rc}")


def make_data(task: str, data: str, args: Sequence[str]) -> None:
    if not os.path.exists(os.path.join(data, "meta.json")):
        cli(["make-data", "--task", task, "--out", data, "--no-progress", *args])


def evaluate_run(task: str, data: str, run: str, work: str) -> Dict[str, float]:
    """Export the test split with the run's encoder and evaluate the task's protocol(s)
    (the demo's sequence, quiet)."""
    from xclass.demo import evaluate_task

    metrics: Dict[str, float] = {}
    for report in evaluate_task(task, data, run, work, quiet=True).values():
        metrics.update(_flat(json.load(open(os.path.join(report, "metrics.json")))))
    return metrics


def _flat(report: Dict) -> Dict[str, float]:
    m = report.get("metrics", report)
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def train_and_evaluate(task: str, config: str, data: str, work: str, overrides: Sequence[str] = (),
                       workers: int = 1, untrained: bool = False) -> Dict[str, float]:
    """Train ``config`` on ``data`` (or the random-init baseline) and evaluate it; adds wall times."""
    tag = "untrained" if untrained else "trained"
    run = os.path.join(work, tag, "run")
    t0 = time.perf_counter()
    cli(["train", "--config", config, "--workers", str(workers), f"data.path={data}", f"train.out_dir={run}",
         "train.resume=false", "train.overwrite=true", "train.progress=false", *overrides, *(UNTRAINED if untrained else [])])
    t1 = time.perf_counter()
    m = evaluate_run(task, data, run, os.path.join(work, tag))
    m.update(train_s=t1 - t0, eval_s=time.perf_counter() - t1)
    return m


#: full CPU configs: make-data arguments as in each config's header comment.
FULL = {
    "face": ["--num-classes", "300", "--rows-per-class", "20", "--test-classes", "60", "--opt", "image_size=16"],
    "speaker": ["--num-classes", "120", "--rows-per-class", "16", "--test-classes", "30",
                "--opt", "max_frames=80", "--opt", "min_frames=40"],
    "quic": ["--num-classes", "300", "--rows-per-class", "20", "--test-classes", "60"],
}


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("work")
    p.add_argument("--config", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data-args", default=None, help="make-data arguments (one string)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    config = a.config or os.path.join(ROOT, "configs", a.task, "cpu.yaml")
    data = os.path.join(a.work, "data")
    t0 = time.perf_counter()
    make_data(a.task, data, a.data_args.split() if a.data_args else FULL[a.task])
    t_data = time.perf_counter() - t0
    res = {}
    for untrained in (False, True):
        res["untrained" if untrained else "trained"] = train_and_evaluate(
            a.task, config, data, a.work, a.overrides, a.workers, untrained)
    print(json.dumps({"task": a.task, "config": os.path.relpath(config, ROOT), "workers": a.workers,
                      "make_data_s": t_data, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
