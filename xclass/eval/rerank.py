"""Learned re-ranking of shortlists: a gradient-boosted classifier over per-(query, label) features.

A second stage after :mod:`xclass.eval.ranker`: for every shortlisted (query, label) pair it
combines the linear ranker's probability, the kNN vote, the label's training frequency and how
well the label agrees with the query's other high-scoring labels (training co-occurrence), and
predicts whether the label is relevant. The model is fitted on held-out *training* rows (a split
the ranker did not train on), never on test labels. Features of pair (q, l), shortlist ``C_q``:

``p`` ranker probability, ``log p``, ``vote`` kNN vote, ``log(1 + count_l)``, shortlist position
/ K (by vote), ``p / max p``, rank by ``p`` / K, ``max p``, ``max vote`` (query context),
``max_m p_m P(l | m)`` and ``sum_m p_m P(l | m) / sum_m p_m`` over the other labels m of ``C_q``
(``P(l | m)`` from training label co-occurrence), and ``sum_m p_m P(m | l) / sum_m P(m | l)``
(are the labels that usually come with l scored high?).

Shapes: shortlists ``[n, K]`` int64 (-1 pads), probabilities / votes ``[n, K]`` aligned with them,
features ``[n, K, F]`` float32.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.sparse as sp

FEATURES = ("p", "log_p", "vote", "log_count", "vote_rank", "p_rel", "p_rank", "p_max", "vote_max",
            "cooc_max", "cooc_mean", "implied_mean")


def conditional_cooccurrence(Y: sp.csr_matrix) -> sp.csr_matrix:
    """Binary labels ``Y`` ``[N, L]`` -> ``P[m, l]`` = P(l | m) = rows with m and l / rows with m."""
    Yb = Y.astype(np.float32)
    Yb.data[:] = 1.0
    co = (Yb.T @ Yb).tocsr()
    cnt = np.maximum(np.asarray(Yb.sum(0)).ravel(), 1.0)
    return sp.csr_matrix(sp.diags(1.0 / cnt) @ co)


def _cooc(short: np.ndarray, p: np.ndarray, cond: sp.csr_matrix) -> np.ndarray:
    """[n, K, 3]: cooc_max, cooc_mean, implied_mean of each shortlisted label (see module doc)."""
    n, K = short.shape
    out = np.zeros((n, K, 3), np.float32)
    for i in range(n):
        ok = short[i] >= 0
        c = short[i][ok]
        if len(c) < 2:
            continue
        M = cond[c][:, c].toarray()  # M[m, l] = P(l | m)
        np.fill_diagonal(M, 0.0)
        pi = p[i][ok]
        W = pi[:, None] * M
        out[i, ok, 0] = W.max(0)
        out[i, ok, 1] = W.sum(0) / max(float(pi.sum()), 1e-9)
        out[i, ok, 2] = (M * pi[None, :]).sum(1) / np.maximum(M.sum(1), 1e-9)
    return out


def pair_features(short: np.ndarray, p: np.ndarray, vote: np.ndarray, counts: np.ndarray,
                  cond: sp.csr_matrix) -> np.ndarray:
    """Features ``[n, K, len(FEATURES)]`` of the shortlisted pairs (pads: zeros)."""
    n, K = short.shape
    ok = short >= 0
    p = np.where(ok, p, 0.0).astype(np.float32)
    vote = np.where(ok, vote, 0.0).astype(np.float32)
    pos = np.broadcast_to(np.arange(K, dtype=np.float32) / K, (n, K))
    p_max = p.max(1, keepdims=True)
    p_rank = np.argsort(np.argsort(-p, 1, kind="stable"), 1).astype(np.float32) / K
    cols = [p, np.log(np.maximum(p, 1e-6)), vote, np.log1p(counts[np.maximum(short, 0)]).astype(np.float32), pos,
            p / np.maximum(p_max, 1e-9), p_rank, np.broadcast_to(p_max, (n, K)),
            np.broadcast_to(vote.max(1, keepdims=True), (n, K))]
    F = np.concatenate([np.stack(cols, -1), _cooc(short, p, cond)], -1).astype(np.float32)
    return np.where(ok[..., None], F, 0.0).astype(np.float32)


def fit_reranker(F: np.ndarray, short: np.ndarray, target: np.ndarray, seed: int = 0, iters: int = 300):
    """Fit the classifier on the non-pad pairs of ``F`` ``[n, K, F]`` with 0/1 ``target`` ``[n, K]``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    ok = short >= 0
    return HistGradientBoostingClassifier(max_iter=iters, random_state=seed).fit(F[ok], target[ok])


def rerank(model, F: np.ndarray, short: np.ndarray, top: int) -> Tuple[np.ndarray, np.ndarray]:
    """Shortlists re-ranked by the classifier's probability: -> (label ids ``[n, top]`` best first,
    -1 pads; probabilities ``[n, top]``, -inf pads)."""
    n, K = short.shape
    ok = short >= 0
    s = np.full((n, K), -np.inf)
    if ok.any():
        s[ok] = model.predict_proba(F[ok])[:, 1]
    order = np.argsort(-s, axis=1, kind="stable")[:, :top]
    val = np.take_along_axis(s, order, 1)
    lab = np.where(np.isfinite(val), np.take_along_axis(short, order, 1), -1)
    return lab, val.astype(np.float32)


def targets(short: np.ndarray, Y: sp.csr_matrix) -> np.ndarray:
    """0/1 ``[n, K]``: is shortlisted label ``short[i, j]`` in row i of ``Y`` ``[n, L]``."""
    n, K = short.shape
    got = np.asarray(Y.tocsr()[np.repeat(np.arange(n), K), np.maximum(short, 0).ravel()]).reshape(n, K)
    return ((got > 0) & (short >= 0)).astype(np.int8)
