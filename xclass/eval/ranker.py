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

from xclass.eval.metrics import LabelSets
from xclass.eval.tfidf import label_matrix, neighbours, top_labels, vote


@dataclass(frozen=True)
class RankerModel:
    """Per-label linear rankers: weights ``[L, V]`` CSR, biases ``[L]`` (labels without training
    rows: no weights, bias -inf, so they never score above 0)."""
    weights: sp.csr_matrix
    bias: np.ndarray


def shortlist(Q: sp.csr_matrix, D: sp.csr_matrix, labels: LabelSets, num_labels: int, k: int = 50, K: int = 100,
              prune: float = 0.0, exclude_self: bool = False, chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``K`` labels ``[n_q, K]`` of each query by the similarity-weighted votes of its ``k``
    nearest rows of ``D`` (training rows with ``labels``), and their votes ``[n_q, K]`` (divided
    by the sum of the k similarities, so in [0, 1]); ``exclude_self``: ``Q`` is ``D`` and row i is
    not its own neighbour."""
    Y = label_matrix(labels, num_labels)
    Dp = D.copy()
    if prune > 0:
        Dp.data[Dp.data < prune] = 0.0
        Dp.eliminate_zeros()
    out = np.full((Q.shape[0], min(K, num_labels)), -1, np.int64)
    votes = np.zeros(out.shape, np.float32)
    for a, sims, nn in neighbours(Q, Dp, k, chunk, exclude_self):
        w = np.maximum(sims, 0.0)
        V = vote(w, nn, Y) / np.maximum(w.sum(1, keepdims=True), 1e-12)
        out[a:a + chunk] = top_labels(V, K)
        votes[a:a + chunk] = np.where(out[a:a + chunk] >= 0, np.take_along_axis(V, np.maximum(out[a:a + chunk], 0), 1), 0)
    return out, votes


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


def score_shortlist(model: RankerModel, Q: sp.csr_matrix, short: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``sigmoid(w_l . x_q + b_l)`` ``[n, K]`` of each shortlisted pair (-inf at pads)."""
    WT = model.weights.T.tocsr()
    out = np.full(short.shape, -np.inf, np.float32)
    for a in range(0, Q.shape[0], chunk):
        s = short[a:a + chunk]
        logits = (Q[a:a + chunk] @ WT).toarray()
        z = np.take_along_axis(logits, np.maximum(s, 0), 1) + model.bias[np.maximum(s, 0)]
        out[a:a + chunk] = np.where(s >= 0, 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))), -np.inf)
    return out


def predict(model: RankerModel, Q: sp.csr_matrix, short: np.ndarray, top: Optional[int] = None,
            chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Each query's shortlist ``[n, K]`` re-ranked by ``sigmoid(w_l . x + b_l)``: -> (label ids
    ``[n, top]`` best first, -1 pads; scores ``[n, top]`` in [0, 1], -inf pads)."""
    return sort_by_score(short, score_shortlist(model, Q, short, chunk), top or short.shape[1])


def sort_by_score(short: np.ndarray, score: np.ndarray, top: int) -> Tuple[np.ndarray, np.ndarray]:
    """Shortlists ``[n, K]`` ordered by ``score`` ``[n, K]`` (-inf = pad): -> (ids, scores) ``[n, top]``."""
    n = short.shape[0]
    lab_out = np.full((n, top), -1, np.int64)
    val_out = np.full((n, top), -np.inf, np.float32)
    for a in range(0, n, 4096):
        s, p = short[a:a + 4096], score[a:a + 4096]
        order = np.argsort(-p, axis=1, kind="stable")[:, :top]
        lab_out[a:a + 4096, :order.shape[1]] = np.where(np.isfinite(np.take_along_axis(p, order, 1)),
                                                        np.take_along_axis(s, order, 1), -1)
        val_out[a:a + 4096, :order.shape[1]] = np.take_along_axis(p, order, 1)
    return lab_out, val_out


def take_rows(labels: LabelSets, rows: np.ndarray) -> LabelSets:
    """The label sets of ``rows`` (int indices, in that order)."""
    lens = np.diff(labels.indptr)[rows]
    idx = np.concatenate([labels.indices[labels.indptr[r]:labels.indptr[r + 1]] for r in rows]) if len(rows) \
        else np.zeros(0, np.int64)
    return LabelSets(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), idx.astype(np.int64))


def fit(D: sp.csr_matrix, labels: LabelSets, num_labels: int, k: int, K: int, C: float, prune: float, seed: int,
        progress: bool = False) -> RankerModel:
    """The rankers of training rows ``D`` with ``labels``, trained on their own kNN shortlists."""
    short_tr, _ = shortlist(D, D, labels, num_labels, k, K, prune, exclude_self=True)
    return fit_rankers(D, labels, short_tr, num_labels, C, seed, progress=progress)


def score(model: RankerModel, D: sp.csr_matrix, labels: LabelSets, Q: sp.csr_matrix, num_labels: int, k: int,
          K: int, prune: float):
    """Shortlist ``Q`` against the training rows ``D`` and score it: -> (shortlist ``[n, K]``,
    kNN votes ``[n, K]``, ranker probabilities ``[n, K]``)."""
    sq, vq = shortlist(Q, D, labels, num_labels, k, K, prune)
    return sq, vq, score_shortlist(model, Q, sq)


def fit_and_score(D: sp.csr_matrix, labels: LabelSets, Q: sp.csr_matrix, num_labels: int, k: int, K: int,
                  C: float, prune: float, seed: int, progress: bool = False):
    """:func:`fit` on ``D``/``labels``, then :func:`score` of ``Q``."""
    return score(fit(D, labels, num_labels, k, K, C, prune, seed, progress), D, labels, Q, num_labels, k, K, prune)


def holdout_mask(ids: np.ndarray, holdout: int) -> np.ndarray:
    """True for the training rows held out for the re-ranker: ``hash(id) % holdout == 0`` with a
    64-bit Fibonacci hash (its high bits), unrelated to the id-hash splits of the tools."""
    h = (np.asarray(ids).astype(np.uint64) * np.uint64(11400714819323198485)) >> np.uint64(32)
    return h % np.uint64(holdout) == 0


def fit_reranker_holdout(D: sp.csr_matrix, labels: LabelSets, ids: np.ndarray, num_labels: int, k: int, K: int,
                         C: float, prune: float, seed: int, holdout: int = 10):
    """The re-ranker of :mod:`xclass.eval.rerank`, fitted on the training rows held out by
    :func:`holdout_mask`, scored by a matcher + rankers trained on the other training rows."""
    from xclass.eval import rerank as RR

    ho = holdout_mask(ids, holdout)
    fit_rows, ho_rows = np.flatnonzero(~ho), np.flatnonzero(ho)
    if len(ho_rows) == 0 or len(fit_rows) == 0:
        raise ValueError(f"re-ranker holdout 1/{holdout} of {len(ids)} training rows leaves an empty part")
    L_fit = take_rows(labels, fit_rows)
    sh, vh, ph = fit_and_score(D[fit_rows], L_fit, D[ho_rows], num_labels, k, K, C, prune, seed)
    Y_fit = label_matrix(L_fit, num_labels)
    F = RR.pair_features(sh, ph, vh, _freq(Y_fit), RR.conditional_cooccurrence(Y_fit))
    return RR.fit_reranker(F, sh, RR.targets(sh, label_matrix(take_rows(labels, ho_rows), num_labels)), seed)


def _freq(Y: sp.csr_matrix) -> np.ndarray:
    """Label frequency per 100,000 training rows ``[L]`` (the same scale for any split size)."""
    return np.asarray(Y.sum(0)).ravel() * (1e5 / max(Y.shape[0], 1))


def rank_dataset(data: str, k: int = 50, K: int = 50, C: float = 16.0, prune: float = 0.1, seed: int = 0,
                 top: int = 100, rerank: bool = True, holdout: int = 10, progress: bool = False):
    """Train on ``data``'s train split and rank its test split: -> (test ids ``[n]``, label ids
    ``[n, top]``, scores ``[n, top]`` in [0, 1], {"train_s", "predict_s"}). The document vectors
    are those of :func:`xclass.eval.tfidf.features` (TF-IDF of counts, or the imported weights).
    ``rerank``: re-rank with :mod:`xclass.eval.rerank` fitted on 1 / ``holdout`` of the training
    rows (costs a second matcher + rankers fit on the rest)."""
    import os

    from xclass.eval.io import read_table

    from xclass.eval import rerank as RR
    from xclass.eval.fusion import read_meta_num_classes, test_ids
    from xclass.eval.tfidf import features, read_split

    n_labels = read_meta_num_classes(data)
    t0 = time.perf_counter()
    Xtr, Ltr, _ = read_split(os.path.join(data, "train.parquet"))
    Xte, _, _ = read_split(os.path.join(data, "test.parquet"))
    D, Q, _ = features(Xtr, Xte)
    model = fit(D, Ltr, n_labels, k, K, C, prune, seed, progress)
    re = None
    if rerank:
        tr_ids = read_table(os.path.join(data, "train.parquet"), columns=["id"]).column("id").to_numpy()
        re = fit_reranker_holdout(D, Ltr, tr_ids, n_labels, k, K, C, prune, seed, holdout)
    t1 = time.perf_counter()
    sq, vq, p = score(model, D, Ltr, Q, n_labels, k, K, prune)
    if re is None:
        lab, val = sort_by_score(sq, p, min(top, K))
    else:
        Y = label_matrix(Ltr, n_labels)
        F = RR.pair_features(sq, p, vq, _freq(Y), RR.conditional_cooccurrence(Y))
        lab, val = RR.rerank(re, F, sq, min(top, K))
    ids = test_ids(data)
    return ids, lab, val, {"train_s": t1 - t0, "predict_s": time.perf_counter() - t1}
