"""Shortlist + one-vs-all linear ranker over sparse TF-IDF features (matcher + ranker XMC).

Two stages, both on the L2-normalised TF-IDF rows of :func:`xclass.eval.tfidf.features`:

1. Matcher (:func:`shortlist`): the ``k`` nearest training rows of a query (cosine) vote for
   their labels with their similarity; the ``K`` labels with the most votes are its shortlist.
   For the training rows themselves the row is left out of its own neighbours, so their
   shortlists look like a test query's. ``prune`` drops small weights (below ``prune``) from
   the *indexed* training rows only: frequent words have low weights, so this removes most of
   the sparse product's work at a small cost in recall.
2. Ranker (:func:`fit_rankers`): per label a logistic regression (liblinear, L2, ``C``) over the
   sparse features, trained on its positive rows plus its hard negatives = the training rows
   whose shortlist holds the label but whose labels do not. At prediction (:func:`predict`)
   each query scores only its own shortlist: ``sigmoid(w_l . x + b_l)`` in [0, 1], the form
   :mod:`xclass.eval.fusion` expects.

Nothing is specific to one dataset. Shapes: features CSR ``[n, V]`` (rows replicated, one
process), label sets :class:`~xclass.eval.metrics.LabelSets`, shortlists ``[n, K]`` int64 label
ids (-1 pads), weights CSR ``[L, V]`` plus biases ``[L]``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import scipy.sparse as sp

from xclass.eval.fusion import label_matrix
from xclass.eval.metrics import LabelSets


@dataclass(frozen=True)
class RankerModel:
    """Per-label linear rankers: weights ``[L, V]`` CSR, biases ``[L]`` (labels without training
    rows: no weights, bias -inf, so they never score above 0)."""
    weights: sp.csr_matrix
    bias: np.ndarray


def _top_labels(scores: np.ndarray, K: int) -> np.ndarray:
    """Dense ``[b, L]`` scores -> ``[b, K]`` label ids, best first, -1 where the score is <= 0."""
    K = min(K, scores.shape[1])
    part = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    best = np.take_along_axis(part, order, 1)
    return np.where(np.take_along_axis(scores, best, 1) > 0, best, -1)


def shortlist(Q: sp.csr_matrix, D: sp.csr_matrix, labels: LabelSets, num_labels: int, k: int = 50, K: int = 100,
              prune: float = 0.0, exclude_self: bool = False, chunk: int = 1024) -> np.ndarray:
    """Top-``K`` labels ``[n_q, K]`` of each query by the similarity-weighted votes of its ``k``
    nearest rows of ``D`` (training rows with ``labels``); ``exclude_self``: ``Q`` is ``D`` and
    row i is not its own neighbour."""
    Y = label_matrix(labels, num_labels)
    Dp = D.copy()
    if prune > 0:
        Dp.data[Dp.data < prune] = 0.0
        Dp.eliminate_zeros()
    DT = Dp.T.tocsr()
    out = np.full((Q.shape[0], min(K, num_labels)), -1, np.int64)
    for a in range(0, Q.shape[0], chunk):
        S = (Q[a:a + chunk] @ DT).toarray()
        if exclude_self:
            r = np.arange(S.shape[0])
            S[r, a + r] = 0.0
        kk = min(k, S.shape[1])
        nn = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        w = np.maximum(np.take_along_axis(S, nn, 1), 0.0)
        Vt = sp.csr_matrix((w.ravel(), nn.ravel(), np.arange(0, nn.size + 1, kk)), shape=(S.shape[0], D.shape[0]))
        out[a:a + chunk] = _top_labels((Vt @ Y).toarray(), K)
    return out


def _examples(Y: sp.csr_matrix, short: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training pairs grouped by label: (label offsets ``[L + 1]``, row ids, targets 0/1) over the
    union of the positives ``Y`` ``[N, L]`` and the shortlist pairs ``short`` ``[N, K]``."""
    n, L = Y.shape
    rows = np.repeat(np.arange(n), short.shape[1])
    lab = short.ravel()
    ok = lab >= 0
    S = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], lab[ok])), shape=(n, L))
    S.data[:] = 1.0
    P = Y.astype(np.float32).tocsr()
    P.data[:] = 2.0
    A = (S + P).tocsc()  # 1: negative (shortlist only), 2 or 3: positive
    A.sort_indices()
    return A.indptr.astype(np.int64), A.indices.astype(np.int64), (A.data >= 2).astype(np.int8)


def _fit_one(X: sp.csr_matrix, rows: np.ndarray, y: np.ndarray, C: float, seed: int):
    """One label's logistic regression on ``X[rows]`` restricted to the columns those rows use
    -> (column ids, weights, bias)."""
    from sklearn.linear_model import LogisticRegression

    Xs = X[rows]
    cols = np.unique(Xs.indices)
    if y.min() == y.max():  # only positives: a constant score (no negative to separate from)
        p = len(y) / (len(y) + 1.0)
        return cols[:0], np.zeros(0, np.float32), float(np.log(p / (1 - p)))
    Xs = Xs[:, cols]
    m = LogisticRegression(C=C, solver="liblinear", random_state=seed, max_iter=200).fit(Xs, y)
    return cols, m.coef_.ravel().astype(np.float32), float(m.intercept_[0])


def fit_rankers(X: sp.csr_matrix, labels: LabelSets, short: np.ndarray, num_labels: int, C: float = 4.0,
                seed: int = 0, min_weight: float = 1e-3, progress: bool = False) -> RankerModel:
    """One ranker per label (see the module doc) from training features ``X`` ``[N, V]``, their
    labels and their shortlists ``[N, K]``; weights below ``min_weight`` in size are dropped."""
    Y = label_matrix(labels, num_labels)
    off, rows, y = _examples(Y, short)
    ind, val, ptr = [], [], np.zeros(num_labels + 1, np.int64)
    bias = np.full(num_labels, -np.inf, np.float32)
    t0 = time.perf_counter()
    for lab in range(num_labels):
        a, b = off[lab], off[lab + 1]
        ptr[lab + 1] = ptr[lab]
        if b > a and y[a:b].any():
            cols, w, bias[lab] = _fit_one(X, rows[a:b], y[a:b], C, seed)
            keep = np.abs(w) >= min_weight
            ind.append(cols[keep])
            val.append(w[keep])
            ptr[lab + 1] += int(keep.sum())
        if progress and lab % 2000 == 0:
            print(f"[ranker] {lab}/{num_labels} labels, {time.perf_counter() - t0:.0f} s", flush=True)
    W = sp.csr_matrix((np.concatenate(val) if val else np.zeros(0, np.float32),
                       np.concatenate(ind) if ind else np.zeros(0, np.int64), ptr),
                      shape=(num_labels, X.shape[1]))
    return RankerModel(W, bias)


def predict(model: RankerModel, Q: sp.csr_matrix, short: np.ndarray, top: Optional[int] = None,
            chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Each query's shortlist ``[n, K]`` re-ranked by ``sigmoid(w_l . x + b_l)``: -> (label ids
    ``[n, top]`` best first, -1 pads; scores ``[n, top]`` in [0, 1], -inf pads)."""
    top = top or short.shape[1]
    WT = model.weights.T.tocsr()
    n = Q.shape[0]
    lab_out = np.full((n, top), -1, np.int64)
    val_out = np.full((n, top), -np.inf, np.float32)
    for a in range(0, n, chunk):
        s = short[a:a + chunk]
        logits = (Q[a:a + chunk] @ WT).toarray()
        z = np.take_along_axis(logits, np.maximum(s, 0), 1) + model.bias[np.maximum(s, 0)]
        p = np.where(s >= 0, 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))), -np.inf)
        order = np.argsort(-p, axis=1, kind="stable")[:, :top]
        lab_out[a:a + chunk, :order.shape[1]] = np.where(np.isfinite(np.take_along_axis(p, order, 1)),
                                                         np.take_along_axis(s, order, 1), -1)
        val_out[a:a + chunk, :order.shape[1]] = np.take_along_axis(p, order, 1)
    return lab_out, val_out


def rank_dataset(data: str, k: int = 50, K: int = 100, C: float = 4.0, prune: float = 0.1, seed: int = 0,
                 top: int = 100, progress: bool = False):
    """Train on ``data``'s train split and rank its test split: -> (test ids ``[n]``, label ids
    ``[n, top]``, scores ``[n, top]``, {"train_s", "predict_s"}). The document vectors are those
    of :func:`xclass.eval.tfidf.features` (TF-IDF of counts, or the imported weights)."""
    import json
    import os

    import pyarrow.parquet as pq

    from xclass.eval.tfidf import features, read_split

    with open(os.path.join(data, "meta.json")) as f:
        n_labels = int(json.load(f)["num_classes"])
    t0 = time.perf_counter()
    Xtr, Ltr, _ = read_split(os.path.join(data, "train.parquet"))
    Xte, _, _ = read_split(os.path.join(data, "test.parquet"))
    D, Q, _ = features(Xtr, Xte)
    model = fit_rankers(D, Ltr, shortlist(D, D, Ltr, n_labels, k, K, prune, exclude_self=True), n_labels, C,
                        seed, progress=progress)
    t1 = time.perf_counter()
    lab, val = predict(model, Q, shortlist(Q, D, Ltr, n_labels, k, K, prune), top=min(top, K))
    ids = pq.read_table(os.path.join(data, "test.parquet"), columns=["id"]).column("id").to_numpy()
    return ids, lab, val, {"train_s": t1 - t0, "predict_s": time.perf_counter() - t1}
