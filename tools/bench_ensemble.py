"""Single runs against their fused ensembles on a verification task (face / speaker); JSON lines.

    PYTHONPATH=. python tools/bench_ensemble.py --config configs/speaker/fsdd_cpu.yaml \
        --pairs runs/data/fsdd/trials.parquet --seeds 0,1,2,3,4,5 --groups 3 [--out runs/bench_ensemble]
        [--jobs 2] [--png PLOT.png] [KEY=VALUE ...]
    python tools/bench_ensemble.py --plot ROWS.jsonl --png PLOT.png     # the plot of stored rows

Trains the config once per seed (``train.seed``; ``--jobs`` runs at a time, one thread each),
evaluates every run alone (``export-index --run R --split test``, ``evaluate --protocol face|speaker``)
and every ensemble of ``--groups`` consecutive seeds plus one of all seeds (``export-index --run A
--run B ...``: each run's rows normalised and concatenated / sqrt(K), so a trial's score is the
mean of the runs' cosines). One row per run or ensemble: ``kind`` ("single" / "ensemble"),
``seeds``, and the protocol's metrics (speaker: eer, minDCF; face: eer, 10-fold accuracy,
TAR@FAR); the baseline the ensemble is judged against is the mean of its members' single rows,
written as ``members_mean_<metric>`` on the ensemble row. ``--png``: a bar per single run and
per ensemble for each metric (lower is better for EER / minDCF).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

METRICS = ("eer", "minDCF(p=0.01)", "minDCF(p=0.05)", "acc_10fold", "TAR@FAR=0.01", "TAR@FAR=0.001")


def xclass_cmd(args: List[str], threads: int = 1) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-m", "xclass", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_all(cmds: List[List[str]], jobs: int) -> None:
    """Run the xclass commands ``jobs`` at a time; a failing one stops the benchmark with its stderr."""
    pending, running = list(cmds), []
    while pending or running:
        while pending and len(running) < jobs:
            running.append((pending[0], xclass_cmd(pending.pop(0))))
        cmd, p = running.pop(0)
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"xclass {' '.join(cmd)} failed ({p.returncode}):\n{err.strip().splitlines()[-1] if err else ''}")


def evaluate(runs: List[str], task: str, pairs: str, out: str) -> Dict[str, float]:
    """Export the test split with ``runs`` (one run, or several fused) and score the trials."""
    idx, rep = os.path.join(out, "index"), os.path.join(out, "report")
    run_all([["export-index", *[a for r in runs for a in ("--run", r)], "--split", "test", "--out", idx,
              "--overwrite"]], 1)
    run_all([["evaluate", "--protocol", task, "--embeddings", os.path.join(idx, "test_embeddings.parquet"),
              "--pairs", pairs, "--out", rep]], 1)
    with open(os.path.join(rep, "metrics.json")) as f:
        m = json.load(f)
    flat = m.get("metrics", m)
    return {k: round(float(flat[k]), 6) for k in METRICS if k in flat}


def plot_rows(rows: List[Dict], png: str) -> None:
    """One panel per metric the rows carry: a bar per single run and per ensemble (its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.45 * len(rows) + 1.5), squeeze=False)
    names = [("fused " if r["kind"] == "ensemble" else "run ") + "+".join(map(str, r["seeds"])) for r in rows]
    for ax, m in zip(axes[0], metrics):
        pct = not m.startswith("minDCF")       # rates in %, detection costs as they are
        vals = [(100 if pct else 1) * r.get(m, float("nan")) for r in rows]
        ax.barh(names, vals, color=["tab:orange" if r["kind"] == "ensemble" else "grey" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"{m} (%)" if pct else m)
    fig.suptitle(f"single runs (grey) and fused ensembles (orange): {rows[0].get('config', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plot", metavar="ROWS", help="only plot the rows of this JSON lines file (to --png)")
    ap.add_argument("--png", default=None, help="write the plot here")
    ap.add_argument("--config")
    ap.add_argument("--pairs", help="trials / pairs Parquet of the test split")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--groups", type=int, default=3, help="ensembles of this many consecutive seeds")
    ap.add_argument("--out", default="runs/bench_ensemble")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.plot:
        with open(a.plot) as f:
            plot_rows([json.loads(line) for line in f if line.strip()], a.png or a.plot.rsplit(".", 1)[0] + ".png")
        return 0
    if not a.config or not a.pairs:
        ap.error("--config and --pairs are required (or --plot ROWS)")
    from xclass.config import load_config

    task = load_config(a.config, a.overrides).data.task
    if task not in ("face", "speaker"):
        sys.exit(f"--config: a face or speaker config (verification trials), not {task}")
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = {s: os.path.join(a.out, f"run_{s}") for s in seeds}
    run_all([["train", "--config", a.config, f"train.out_dir={runs[s]}", f"train.seed={s}", "train.progress=false",
              *a.overrides] for s in seeds if not os.path.exists(os.path.join(runs[s], "config.yaml"))], a.jobs)
    singles = {}
    for s in seeds:
        singles[s] = evaluate([runs[s]], task, a.pairs, os.path.join(a.out, f"eval_{s}"))
        print(json.dumps({"bench": "ensemble", "config": a.config, "overrides": a.overrides, "kind": "single",
                          "seeds": [s], **singles[s]}), flush=True)
    rows = [{"kind": "single", "seeds": [s], **singles[s]} for s in seeds]
    groups = [seeds[i:i + a.groups] for i in range(0, len(seeds) - a.groups + 1, a.groups)]
    for g in groups + ([seeds] if len(seeds) > a.groups else []):
        m = evaluate([runs[s] for s in g], task, a.pairs, os.path.join(a.out, "eval_" + "_".join(map(str, g))))
        base = {f"members_mean_{k}": round(sum(singles[s][k] for s in g) / len(g), 6) for k in m}
        print(json.dumps({"bench": "ensemble", "config": a.config, "overrides": a.overrides, "kind": "ensemble",
                          "seeds": g, **m, **base}), flush=True)
        rows.append({"kind": "ensemble", "seeds": g, "config": a.config, **m})
    if a.png:
        plot_rows(rows, a.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
