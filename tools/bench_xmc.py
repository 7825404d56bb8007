"""XMC quality benchmark: baselines and xclass recipes trained and evaluated in one run.

    python tools/bench_xmc.py --data runs/data/wordnet [--features runs/data/wordnet_minilm] \
        [--max-train 20000] [--methods tfidf_knn,xr_linear,dual_embbag,dual_minilm] --out rows.jsonl

One JSON row per method (also printed): method, P@1/3/5, nDCG@5, PSP@1/3/5, R@10 (percent,
pyxclib conventions: PSP with A = 0.55, B = 1.5 from the training labels, normalised by the
best achievable), train_s, predict_s (wall seconds), peak_rss_mb and cpu_s (that method's own
process tree: each method runs in a child process, its peak RSS and user+system CPU seconds read
with wait4). Methods:

- ``tfidf_knn``: TF-IDF 50-NN label voting (xclass.eval.tfidf) on the dataset's tokens.
- ``xr_linear``: PECOS XR-Linear (hierarchical k-means label tree + linear rankers) on the same
  TF-IDF features, run by a Python that has libpecos (``--pecos-python`` or
  ``$XCLASS_PECOS_PYTHON``, default /work/pecos-venv/bin/python if present); without one, a
  scikit-learn one-vs-rest linear model on the labels with >= 2 training rows (``ovr_linear``).
- ``dual_embbag``: ``configs/xmc/wordnet_dual.yaml`` (embedding-bag towers, text+free labels).
- ``dual_minilm``: ``configs/xmc/wordnet_minilm.yaml`` on ``--features`` (a dataset with frozen
  all-MiniLM-L6-v2 embeddings from ``python -m xclass.cli.xmc embed-text``): MLP query tower,
  label tower over the label-text embeddings plus a free residual, decoupled softmax.
- ``dual_tfidf``: ``configs/xmc/wordnet_tfidf_dual.yaml`` (TF-IDF-weighted embedding-bag query
  tower with SparseAdam on its table, ``text+free`` labels).
- ``ranker``: xclass.eval.ranker on the same TF-IDF features: TF-IDF kNN shortlist (``--ranker-K``
  labels), one logistic regression per label on its positives + shortlist hard negatives, and the
  learned re-ranker fitted on 10% held-out training rows (``python -m xclass.cli.xmc ranker``);
  writes ``WORK/ranker/rankings.parquet``.
- ``fusion``: the ``dual_tfidf`` run (else ``dual_embbag``) fused with kNN votes in its own
  embedding space and TF-IDF kNN votes (xclass.eval.fusion, ``--fusion-weights``); reuses the
  neighbours saved by ``tfidf_knn`` in the same ``--work``. predict_s includes encoding the
  training rows and both kNN searches; the dual run's own time is in its row. The ``ranker``
  rankings of the same ``--work`` are the source ``ranker``; without a dual run the fusion is
  TF-IDF kNN + ranker only (e.g. ``--fusion-weights ranker=3,tfidf_knn=1``).
- ``sparse_timing``: s/step of ``dual_tfidf`` with dense AdamW vs SparseAdam on the query table
  (``--timing-steps`` steps each).
- ``hybrid``: the ``dual_minilm`` run's label scores (else ``dual_embbag``'s, run before it in
  the same bench) fused with TF-IDF kNN ranks: score = cosine + ``--hybrid-weight`` / (1 + kNN
  rank) over the union of both top lists.

``--max-train N`` keeps the first N training rows (all test rows) for quick development runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from xmc_baselines import KEEP, KS, knn_scores, metrics_row, pecos_python, run_linear  # noqa: E402 (tools/ is on the path)


def subsample(data: str, n: int, work: str) -> str:
    """``data`` with only the first ``n`` training rows (labels.parquet / test unchanged)."""
    import pyarrow.parquet as pq

    out = os.path.join(work, f"{os.path.basename(os.path.normpath(data))}_n{n}")
    if os.path.exists(out):
        return out
    os.makedirs(out)
    for f in os.listdir(data):
        if f != "train.parquet" and os.path.isfile(os.path.join(data, f)):
            shutil.copy(os.path.join(data, f), out)
    pq.write_table(pq.read_table(os.path.join(data, "train.parquet")).slice(0, n), os.path.join(out, "train.parquet"))
    meta = json.load(open(os.path.join(data, "meta.json")))
    meta["splits"]["train"]["rows"] = min(n, meta["splits"]["train"]["rows"])
    json.dump(meta, open(os.path.join(out, "meta.json"), "w"))
    return out


def run_xclass(data: str, config: str, work: str, overrides: List[str]) -> Dict:
    from xclass.eval.xmc_run import evaluate_run

    run = os.path.join(work, os.path.splitext(os.path.basename(config))[0])
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "xclass.cli", "train", "--config", config, f"data.path={data}",
           f"train.out_dir={run}", "train.progress=false", *overrides]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": ROOT})
    t1 = time.perf_counter()
    m = evaluate_run(run, run + "_eval", KS)
    t2 = time.perf_counter()
    return {**{k: round(100 * m[k], 2) for k in KEEP}, "train_s": round(t1 - t0, 1),
            "predict_s": round(t2 - t1, 1), "run": run}


def run_hybrid(data: str, run: str, weight: float) -> Dict:
    """Fuse the dual run's cosine scores with kNN votes (max-normalised per query)."""
    import pyarrow.parquet as pq

    top_knn, tr_s, pr_s = knn_scores(data)
    rk = pq.read_table(os.path.join(run + "_eval", "rankings.parquet"))
    d_ids, d_s = np.array(rk.column("labels").to_pylist()), np.array(rk.column("scores").to_pylist())
    n = len(d_ids)
    out = np.full((n, 10), -1, np.int64)
    for i in range(n):  # votes rank -> a decaying bonus (kNN vote values are not kept by knn_rank)
        sc: Dict[int, float] = {}
        for r, lab in enumerate(d_ids[i]):
            if lab >= 0:
                sc[int(lab)] = float(d_s[i, r])
        for r, lab in enumerate(top_knn[i]):
            if lab >= 0:
                sc[int(lab)] = sc.get(int(lab), float(d_s[i, -1])) + weight / (1.0 + r)
        best = sorted(sc, key=lambda x: -sc[x])[:10]
        out[i, :len(best)] = best
    return {"method": "hybrid", **metrics_row(out, data), "train_s": round(tr_s, 1), "predict_s": round(pr_s, 1)}


def run_ranker(data: str, work: str, K: int) -> Dict:
    """xclass.eval.ranker.rank_dataset (with the re-ranker); rankings -> ``WORK/ranker/rankings.parquet``."""
    from xclass.eval.ranker import rank_dataset
    from xclass.eval.rankings import write_rankings

    ids, lab, val, sec = rank_dataset(data, K=K)
    write_rankings(os.path.join(work, "ranker", "rankings.parquet"), ids, lab, val)
    pad = np.full((len(lab), max(0, max(KS) - lab.shape[1])), -1, np.int64)
    return {"method": "ranker", **metrics_row(np.concatenate([lab, pad], 1), data), "train_s": round(sec["train_s"], 1),
            "predict_s": round(sec["predict_s"], 1), "K": K}


def run_fusion(data: str, run: str, work: str, weights: str, k: int = 50) -> Dict:
    """xclass.eval.fusion.fuse_run on the dual run (its evaluation directory ``run + "_eval"``),
    reusing the TF-IDF neighbours saved by the tfidf_knn method of this bench when present; with
    the ``ranker`` rankings of this bench as one more source; without a dual run (``run`` empty),
    xclass.eval.fusion.fuse_data (TF-IDF kNN + ranker)."""
    from xclass.eval import fusion

    saved = os.path.join(work, "tfidf_knn.neighbours.npz")
    nbrs = None
    if os.path.exists(saved):
        z = np.load(saved)
        nbrs = (z["sim"], z["ids"])
    rk = os.path.join(work, "ranker", "rankings.parquet")
    rankings = {"ranker": rk} if os.path.exists(rk) else {}
    w = fusion.parse_weights(weights, list(rankings))
    t0 = time.perf_counter()
    if run:
        _, top, _ = fusion.fuse_run(run, run + "_eval", w, k, 10, data, nbrs, rankings=rankings)
    else:
        _, top, _ = fusion.fuse_data(data, w, fusion.data_rankings(data, rankings), k, 10, nbrs)
    return {"method": "fusion", **metrics_row(top, data), "train_s": 0.0,
            "predict_s": round(time.perf_counter() - t0, 1), "weights": weights}


def sparse_timing(data: str, work: str, steps: int) -> Dict:
    """s/step of ``wordnet_tfidf_dual.yaml`` with optim.sparse_embeddings false (dense AdamW on the
    query tower's table) and true (SparseAdam), ``steps`` steps each, the first 5 not timed.
    The head (label tower, free label vectors) is the same in both."""
    cfg = os.path.join(ROOT, "configs", "xmc", "wordnet_tfidf_dual.yaml")
    out: Dict = {"method": "sparse_timing", "steps": steps}
    for sp_on in ("false", "true"):
        run = os.path.join(work, f"timing_sparse_{sp_on}")
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "xclass.cli", "train", "--config", cfg, f"data.path={data}",
               f"train.out_dir={run}", "train.progress=false", f"train.max_steps={steps}", "train.log_every=5",
               f"optim.sparse_embeddings={sp_on}"]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": ROOT})
        rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl")) if '"step_ms"' in x]
        timed = [x["step_ms"] for x in rows if x["step"] > 5]
        key = "sparse" if sp_on == "true" else "dense"
        out[f"{key}_s_per_step"] = round(float(np.mean(timed)) / 1000, 3)
    out.update(encoder_step_ms(data))
    return out


def encoder_step_ms(data: str, reps: int = 10) -> Dict:
    """The query tower alone (embbag, token_dim 128, the dataset's first 512 rows as the batch):
    ms per forward + backward + optimizer step, dense AdamW vs SparseAdam, at the dataset's vocab
    size and at 296k tokens (a larger XMC vocabulary)."""
    import torch

    from xclass.models.encoders.text import EmbBagEncoder
    from xclass.eval.tfidf import read_split
    from xclass.train.sparse_optim import make_split_optimizer

    X, _, V = read_split(os.path.join(data, "train.parquet"))
    X = X[:512]
    L = int(np.diff(X.indptr).max())
    tok = np.zeros((512, L), np.int64)
    for i in range(512):
        row = X.indices[X.indptr[i]:X.indptr[i + 1]]
        tok[i, :len(row)] = row
    inputs = {"tokens": torch.from_numpy(tok), "lengths": torch.from_numpy(np.diff(X.indptr).astype(np.int64))}

    class Cfg:
        name, lr, weight_decay, momentum, betas = "adamw", 1e-3, 0.0, 0.0, (0.9, 0.999)

    out = {}
    for vocab in (V, 296_000):
        for kind in ("dense", "sparse"):
            torch.manual_seed(0)
            enc = EmbBagEncoder(vocab, 128, 128, (), "mean", 128, 0.0)
            opt = (make_split_optimizer(enc, Cfg) if kind == "sparse"
                   else torch.optim.AdamW(enc.parameters(), lr=1e-3, weight_decay=0.0))
            times = []
            for r in range(reps + 2):
                t0 = time.perf_counter()
                opt.zero_grad()
                enc(inputs).square().mean().backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            out[f"encoder_ms_{kind}_V{vocab}"] = round(1000 * float(np.median(times[2:])), 1)
    return out


def child(a: argparse.Namespace) -> Dict:
    if a.method == "tfidf_knn":
        top, tr_s, pr_s = knn_scores(a.data, save=os.path.join(a.work, "tfidf_knn.neighbours.npz"))
        return {"method": "tfidf_knn", **metrics_row(top, a.data), "train_s": round(tr_s, 1),
                "predict_s": round(pr_s, 1)}
    if a.method == "xr_linear":
        return run_linear(a.data, pecos_python(a.pecos_python))
    if a.method == "dual_embbag":
        cfg = os.path.join(ROOT, "configs", "xmc", "wordnet_dual.yaml")
        return {"method": "dual_embbag", **run_xclass(a.data, cfg, a.work, a.override)}
    if a.method == "dual_minilm":
        cfg = os.path.join(ROOT, "configs", "xmc", "wordnet_minilm.yaml")
        return {"method": "dual_minilm", **run_xclass(a.features, cfg, a.work, a.override)}
    if a.method == "dual_tfidf":
        cfg = os.path.join(ROOT, "configs", "xmc", "wordnet_tfidf_dual.yaml")
        return {"method": "dual_tfidf", **run_xclass(a.data, cfg, a.work, a.override)}
    if a.method == "ranker":
        return run_ranker(a.data, a.work, a.ranker_K)
    if a.method == "fusion":  # the dual_tfidf run of this bench, else the embedding-bag run, else none
        run = os.path.join(a.work, "wordnet_tfidf_dual")
        if not os.path.exists(os.path.join(run + "_eval", "label_index")):
            run = os.path.join(a.work, "wordnet_dual")
        if not os.path.exists(os.path.join(run + "_eval", "label_index")):
            run = ""
        return run_fusion(a.data, run, a.work, a.fusion_weights)
    if a.method == "sparse_timing":
        return sparse_timing(a.data, a.work, a.timing_steps)
    if a.method == "hybrid":  # fuses the MiniLM run when there is one, else the embedding-bag run
        run = os.path.join(a.work, "wordnet_minilm")
        if a.features and os.path.exists(os.path.join(run + "_eval", "rankings.parquet")):
            return run_hybrid(a.features, run, a.hybrid_weight)
        return run_hybrid(a.data, os.path.join(a.work, "wordnet_dual"), a.hybrid_weight)
    raise ValueError(f"unknown method {a.method!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--features", default=None, help="the dataset with frozen-tower features (dual_minilm)")
    p.add_argument("--methods", default="tfidf_knn,xr_linear,dual_embbag,dual_minilm,hybrid")
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--work", default="runs/bench_xmc")
    p.add_argument("--out", default=None, help="JSONL file of the rows")
    p.add_argument("--pecos-python", default="")
    p.add_argument("--hybrid-weight", type=float, default=0.3)
    p.add_argument("--fusion-weights", default="dual=1,emb_knn=1,tfidf_knn=1",
                   help="fusion: weights of the sources dual, emb_knn, tfidf_knn, ranker (xclass.eval.fusion)")
    p.add_argument("--ranker-K", type=int, default=50, help="ranker: shortlist size")
    p.add_argument("--timing-steps", type=int, default=25, help="sparse_timing: steps per variant")
    p.add_argument("--override", action="append", default=[], help="config override for the xclass recipes")
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--row-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.method:
        row = child(a)
        json.dump(row, open(a.row_out, "w"))
        return 0
    os.makedirs(a.work, exist_ok=True)
    if a.max_train:
        a.data = subsample(a.data, a.max_train, a.work)
        a.features = subsample(a.features, a.max_train, a.work) if a.features else None
    rows = []
    for m in a.methods.split(","):
        if m == "dual_minilm" and not a.features:
            print(f"skip {m}: no --features dataset", file=sys.stderr)
            continue
        row_file = os.path.join(a.work, f"{m}.row.json")
        argv = [sys.executable, os.path.abspath(__file__), "--data", a.data, "--method", m, "--row-out", row_file,
                "--work", a.work, "--pecos-python", a.pecos_python, "--hybrid-weight", str(a.hybrid_weight),
                "--fusion-weights", a.fusion_weights, "--timing-steps", str(a.timing_steps),
                "--ranker-K", str(a.ranker_K)]
        argv += (["--features", a.features] if a.features else []) + sum((["--override", o] for o in a.override), [])
        proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": ROOT})
        _, status, ru = os.wait4(proc.pid, 0)
        if status != 0:
            print(f"{m}: failed (status {status})", file=sys.stderr)
            continue
        row = {**json.load(open(row_file)), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
               "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
               "data": a.data, "max_train": a.max_train or None}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
