"""Reports: metrics.json, summary.md and PNG plots in an output directory; a stdout table."""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional

import numpy as np


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def format_table(metrics: Dict[str, float], title: str = "metrics") -> str:
    """A compact two-column table; rates in [0, 1] are shown in percent."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, (int, np.integer)):
            rows.append((k, f"{int(v)}"))
        elif isinstance(v, (float, np.floating)):
            rows.append((k, f"{100 * v:.2f}" if 0.0 <= v <= 1.0 and not k.startswith("minDCF")
                         else f"{v:.4f}"))
    w = max([len(k) for k, _ in rows] + [len(title)])
    lines = [f"{title:<{w}}  value", f"{'-' * w}  -----"] + [f"{k:<{w}}  {v}" for k, v in rows]
    return "\n".join(lines)


def print_table(metrics: Dict[str, float], title: str = "metrics") -> None:
    print(format_table(metrics, title))


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_xmc(metrics: Dict[str, float], out_dir: str) -> Optional[str]:
    groups: Dict[str, Dict[int, float]] = {}
    for key, val in metrics.items():
        m = re.fullmatch(r"(P|PSP|nDCG|PSnDCG)@(\d+)", key)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = val
    if not groups:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = sorted({k for g in groups.values() for k in g})
    width = 0.8 / len(groups)
    for j, (name, g) in enumerate(sorted(groups.items())):
        ax.bar(np.arange(len(ks)) + j * width, [100 * g.get(k, np.nan) for k in ks], width, label=name)
    ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2, [f"@{k}" for k in ks])
    ax.set_ylabel("%")
    ax.legend()
    path = os.path.join(out_dir, "xmc_at_k.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_verification(scores: np.ndarray, target: np.ndarray, out_dir: str):
    from statistics import NormalDist
    from xclass.eval.verification import det_curve, roc
    probit = np.vectorize(NormalDist().inv_cdf, otypes=[float])   # DET axes are normal deviates (empty: no line)
    plt = _plt()
    paths = []
    fpr, tpr, _ = roc(scores, target)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.semilogx(np.maximum(fpr, 1e-6), tpr)
    ax.set(xlabel="FAR (false accept rate)", ylabel="TAR", title="ROC", xlim=(1e-5, 1))
    ax.grid(True, which="both", alpha=0.3)
    paths.append(os.path.join(out_dir, "roc.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    f, fn, _ = det_curve(scores, target)
    ok = (f > 0) & (fn > 0) & (f < 1) & (fn < 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(probit(f[ok]), probit(fn[ok]))
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5])
    ax.set_xticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set(xlabel="false alarm (%)", ylabel="miss (%)", title="DET")
    ax.grid(True, alpha=0.3)
    paths.append(os.path.join(out_dir, "det.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(scores[target], bins=60, alpha=0.6, density=True, label="genuine / target")
    ax.hist(scores[~target], bins=60, alpha=0.6, density=True, label="impostor / non-target")
    ax.set(xlabel="cosine score", ylabel="density")
    ax.legend()
    paths.append(os.path.join(out_dir, "score_hist.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _plot_open_set(fpir: np.ndarray, dir_: np.ndarray, out_dir: str) -> str:
    """open_set.png: DIR against FPIR (log axis), the open-set identification curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ok = fpir > 0
    ax.semilogx(fpir[ok], 100 * dir_[ok], drawstyle="steps-post")
    ax.set(xlabel="FPIR (unknown queries accepted)", ylabel="DIR (known queries accepted and named, %)",
           title="open-set identification", xlim=(max(1e-4, float(fpir[ok].min(initial=1.0))), 1), ylim=(0, 100))
    ax.grid(True, which="both", alpha=0.3)
    path = os.path.join(out_dir, "open_set.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: str, metrics: Dict[str, float], header: Dict[str, object],
                 curves: Optional[Dict[str, np.ndarray]] = None, plots: bool = True,
                 query_errors: Optional[List[dict]] = None) -> dict:
    """Write ``metrics.json`` ({"header", "metrics"}), ``summary.md`` and PNG plots.
    ``curves``: {"scores", "target"[, "hardest"]} for verification protocols (``hardest``: rows of
    :func:`xclass.eval.hardest.hardest_pairs`, written to hardest_pairs.csv), or {"open_set":
    {"fpir", "dir"}} for open-set identification (open_set.png). ``query_errors``:
    identification's most confident wrong answers, written to hardest_queries.csv. Returns the
    file paths."""
    os.makedirs(out_dir, exist_ok=True)
    files = {"json": os.path.join(out_dir, "metrics.json"),
             "markdown": os.path.join(out_dir, "summary.md"), "plots": []}
    clean = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metrics.items()}
    _atomic_write(files["json"], json.dumps({"header": header, "metrics": clean}, indent=2,
                                            default=str))
    if plots:
        files["plots"] += [p for p in [_plot_xmc(clean, out_dir)] if p]
        if curves is not None and "scores" in curves:
            files["plots"] += _plot_verification(curves["scores"], curves["target"], out_dir)
        if curves is not None and "open_set" in curves:
            files["plots"].append(_plot_open_set(curves["open_set"]["fpir"], curves["open_set"]["dir"], out_dir))
    md = ["# xclass evaluation", ""] + [f"- **{k}**: {v}" for k, v in header.items()]
    md += ["", "```", format_table(clean), "```", ""]
    md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in files["plots"]]
    if curves is not None and curves.get("hardest"):
        from xclass.eval.hardest import to_csv, to_markdown

        files["hardest"] = os.path.join(out_dir, "hardest_pairs.csv")
        _atomic_write(files["hardest"], to_csv(curves["hardest"]))
        md += [""] + to_markdown(curves["hardest"])
    if query_errors:
        from xclass.eval.hardest import QUERY_COLUMNS, to_csv

        files["hardest_queries"] = os.path.join(out_dir, "hardest_queries.csv")
        _atomic_write(files["hardest_queries"], to_csv(query_errors, QUERY_COLUMNS))
    _atomic_write(files["markdown"], "\n".join(md) + "\n")
    return files
