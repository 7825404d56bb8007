"""Baselines of ``tools/bench_xmc.py``: TF-IDF features and kNN label voting, PECOS XR-Linear (run
by a Python that has libpecos) or a scikit-learn one-vs-rest fallback, and the metrics row every
method reports (percent, pyxclib conventions)."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from typing import Dict

import numpy as np

KS = (1, 3, 5, 10)
KEEP = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@1", "PSP@3", "PSP@5", "R@10")


def metrics_row(topk: np.ndarray, data: str) -> Dict[str, float]:
    from xclass.eval.metrics import Ranking, inverse_propensity, xmc_metrics
    from xclass.eval.tfidf import read_split

    _, Ltr, _ = read_split(os.path.join(data, "train.parquet"))
    _, Lte, _ = read_split(os.path.join(data, "test.parquet"))
    n_labels = int(json.load(open(os.path.join(data, "meta.json")))["num_classes"])
    inv = inverse_propensity(np.bincount(Ltr.indices, minlength=n_labels), Ltr.n_rows)
    m = xmc_metrics(Ranking.build(topk[:, :max(KS)], Lte, inv), KS)
    return {k: round(100 * m[k], 2) for k in KEEP}


def tfidf_features(data: str):
    from xclass.eval.tfidf import features, read_split

    Xtr, Ltr, _ = read_split(os.path.join(data, "train.parquet"))
    Xte, Lte, _ = read_split(os.path.join(data, "test.parquet"))
    Dtr, Dte, _ = features(Xtr, Xte)
    return Dtr, Ltr, Dte, Lte


def knn_scores(data: str, k: int = 50, save: str = ""):
    """(top-100 label ids [n, 100]) of TF-IDF kNN, and train/predict seconds; with ``save``, the
    k neighbours' (similarities, train-row ids) [n, k] also go to that .npz (for ``fusion``)."""
    from xclass.eval.tfidf import knn_rank

    t0 = time.perf_counter()
    Dtr, Ltr, Dte, _ = tfidf_features(data)
    t1 = time.perf_counter()
    n_labels = int(json.load(open(os.path.join(data, "meta.json")))["num_classes"])
    top = knn_rank(Dte, Dtr, Ltr, n_labels, k=k, top=100, progress=False)
    t2 = time.perf_counter()
    if save:
        from xclass.eval.fusion import tfidf_neighbours

        sim, ids = tfidf_neighbours(data, k)
        np.savez(save, sim=sim, ids=ids)
    return top, t1 - t0, t2 - t1


PECOS_SCRIPT = r"""
import sys, numpy as np, scipy.sparse as sp
from pecos.xmc.xlinear.model import XLinearModel
from pecos.xmc import Indexer, LabelEmbeddingFactory
d = sys.argv[1]
X = sp.load_npz(d + "/Xtr.npz").tocsr().astype(np.float32); Y = sp.load_npz(d + "/Ytr.npz").tocsr().astype(np.float32)
Xt = sp.load_npz(d + "/Xte.npz").tocsr().astype(np.float32)
import time; t0 = time.perf_counter()
feat = LabelEmbeddingFactory.create(Y, X, method="pifa")
tree = Indexer.gen(feat, indexer_type="hierarchicalkmeans", nr_splits=16)
m = XLinearModel.train(X, Y, C=tree, threshold=0.1)
t1 = time.perf_counter()
P = m.predict(Xt, beam_size=10, only_topk=10).tocsr()
t2 = time.perf_counter()
sp.save_npz(d + "/P.npz", P)
print(t1 - t0, t2 - t1)
"""


def pecos_python(arg: str) -> str:
    cand = arg or os.environ.get("XCLASS_PECOS_PYTHON") or "/work/pecos-venv/bin/python"
    if os.path.exists(cand) and subprocess.run([cand, "-c", "import pecos.xmc.xlinear"],
                                               capture_output=True).returncode == 0:
        return cand
    return ""


def run_linear(data: str, py: str) -> Dict:
    import scipy.sparse as sp

    t0 = time.perf_counter()
    Dtr, Ltr, Dte, Lte = tfidf_features(data)
    n_labels = int(json.load(open(os.path.join(data, "meta.json")))["num_classes"])
    Y = sp.csr_matrix((np.ones(len(Ltr.indices), np.float32), Ltr.indices, Ltr.indptr), shape=(Ltr.n_rows, n_labels))
    prep = time.perf_counter() - t0
    if py:
        with tempfile.TemporaryDirectory() as d:
            for name, M in (("Xtr", Dtr), ("Ytr", Y), ("Xte", Dte)):
                sp.save_npz(f"{d}/{name}.npz", M)
            out = subprocess.run([py, "-c", PECOS_SCRIPT, d], capture_output=True, text=True, check=True)
            tr_s, pr_s = map(float, out.stdout.split()[-2:])
            P = sp.load_npz(f"{d}/P.npz").tocsr()
        top = np.full((P.shape[0], 10), -1, np.int64)
        for i in range(P.shape[0]):
            a, b = P.indptr[i], P.indptr[i + 1]
            order = np.argsort(-P.data[a:b], kind="stable")[:10]
            top[i, :len(order)] = P.indices[a:b][order]
        return {"method": "xr_linear", **metrics_row(top, data), "train_s": round(prep + tr_s, 1),
                "predict_s": round(pr_s, 1)}
    from sklearn.linear_model import SGDClassifier  # fallback: one-vs-rest linear on frequent labels
    from sklearn.multiclass import OneVsRestClassifier

    keep = np.flatnonzero(np.asarray(Y.sum(0)).ravel() >= 2)
    t1 = time.perf_counter()
    clf = OneVsRestClassifier(SGDClassifier(loss="hinge", alpha=1e-5, max_iter=5, tol=None), n_jobs=1)
    clf.fit(Dtr, Y[:, keep].toarray() > 0)
    t2 = time.perf_counter()
    S = clf.decision_function(Dte)
    top = keep[np.argsort(-S, axis=1)[:, :10]]
    return {"method": "ovr_linear", **metrics_row(top, data), "train_s": round(prep + t2 - t1, 1),
            "predict_s": round(time.perf_counter() - t2, 1)}
