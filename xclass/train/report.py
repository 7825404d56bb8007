"""Run-directory logging: per-rank metrics.jsonl, a rank-0 progress bar, end-of-run plots."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

from xclass.parallel import ParallelContext


def get_logger(ctx: ParallelContext) -> logging.Logger:
    """A logger whose lines carry the rank (the step is in each message)."""
    log = logging.getLogger(f"xclass.rank{ctx.rank}")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"[xclass rank {ctx.rank}] %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO if ctx.is_main else logging.WARNING)
        log.propagate = False
    return log


def metrics_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, "metrics.jsonl" if rank == 0 else f"metrics-rank{rank}.jsonl")


class RunLog:
    """Appends one JSON line per logged step for this rank; rank 0 drives a tqdm bar."""

    def __init__(self, run_dir: str, ctx: ParallelContext, total_steps: int, start_step: int,
                 progress: bool = True) -> None:
        self.ctx = ctx
        self.path = metrics_path(run_dir, ctx.rank)
        self._f = open(self.path, "a")
        self._bar = None
        if ctx.is_main and progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True, leave=True, file=sys.stderr,
                             disable=None if sys.stderr.isatty() else False, mininterval=1.0)
        self._tb = _tensorboard(run_dir) if ctx.is_main else None

    def _write(self, step: int, fields: Dict[str, Any]) -> Dict[str, Any]:
        row = {"step": step, "rank": self.ctx.rank, "time": round(time.time(), 3), **fields}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        return row

    def log(self, step: int, row: Dict[str, Any]) -> None:
        row = self._write(step, row)
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "rank", "time"):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def event(self, step: int, name: str, **fields: Any) -> None:
        """A row without a loss that marks something in the run's history (e.g. a resume)."""
        self._write(step, {"event": name, **fields})

    def advance(self, n: int, postfix: Dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self._f.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard(run_dir: str) -> Optional[Any]:
    """TensorBoard event files when a writer is installed (torch's or tensorboardX)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except Exception:  # noqa: BLE001
        try:
            from tensorboardX import SummaryWriter  # type: ignore[no-redef]
        except Exception:  # noqa: BLE001
            return None
    return SummaryWriter(os.path.join(run_dir, "tb"))


def write_worker_info(run_dir: str, ctx: ParallelContext) -> None:
    """``workers/rank{r}.json``: pid, host, device and start time of each rank (operators and
    tests use it to find a worker process, and to see where it trained)."""
    import socket

    d = os.path.join(run_dir, "workers")
    os.makedirs(d, exist_ok=True)
    info = {"rank": ctx.rank, "world_size": ctx.world_size, "pid": os.getpid(),
            "host": socket.gethostname(), "device": str(getattr(ctx, "device", "cpu")), "started": time.time()}
    tmp = os.path.join(d, f".rank{ctx.rank}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(d, f"rank{ctx.rank}.json"))


def read_metrics(run_dir: str, rank: int = 0) -> List[Dict[str, Any]]:
    p = metrics_path(run_dir, rank)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(run_dir: str) -> Optional[str]:
    """loss.png: loss and samples/s against step, from rank 0's metrics.jsonl."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    if not rows:
        return None
    try:
        import matplotlib
    except ImportError:  # a bare GPU image (make gpu-check) may lack it: no plot, same run
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax[0].set(xlabel="step", ylabel="loss", title="training loss")
    th = [r for r in rows if "samples_per_s" in r]
    ax[1].plot([r["step"] for r in th], [r["samples_per_s"] for r in th], lw=1.2, color="tab:green")
    ax[1].set(xlabel="step", ylabel="samples/s", title="throughput (global)")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(run_dir, "loss.png")
    fig.savefig(out + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(out + ".tmp.png", out)
    return out
