"""Identification / kNN-classification metrics on retrieved neighbours, numpy only.

Inputs: ``nbr_labels`` [n, K] int, the class of each query's K nearest gallery items, best
first (-1 = no neighbour); ``query_labels`` [n] int; optional ``nbr_scores`` [n, K]
similarities (higher = closer). Registered metrics (``protocol = "identification"``) are
``fn(nbr_labels, query_labels, k=..., nbr_scores=None, **params) -> float``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from xclass.eval.metrics import register


def _check(nbr_labels: np.ndarray, query_labels: np.ndarray, k: int):
    nl = np.asarray(nbr_labels)
    ql = np.asarray(query_labels).ravel()
    if nl.ndim != 2 or nl.shape[0] != ql.shape[0]:
        raise ValueError(f"neighbour labels {nl.shape} do not match {ql.shape[0]} queries")
    if not 1 <= k <= nl.shape[1]:
        raise ValueError(f"k={k} outside 1..{nl.shape[1]}")
    return nl, ql


@register("knn_acc", "identification")
def knn_top1_accuracy(nbr_labels, query_labels, k: int = 1, nbr_scores=None) -> float:
    """1-NN accuracy (= rank-1 identification rate); ``k`` is ignored beyond validation."""
    nl, ql = _check(nbr_labels, query_labels, k)
    return float(np.mean(nl[:, 0] == ql))


@register("cmc", "identification")
def cmc_at_k(nbr_labels, query_labels, k: int = 1, nbr_scores=None) -> float:
    """Rank-k identification rate: the query's class is among the first k neighbours."""
    nl, ql = _check(nbr_labels, query_labels, k)
    return float(np.mean((nl[:, :k] == ql[:, None]).any(1)))


def majority_vote(nbr_labels: np.ndarray, k: int, nbr_scores: Optional[np.ndarray] = None,
                  min_similarity: Optional[float] = None, chunk: int = 4096) -> np.ndarray:
    """Predicted class [n]: the most frequent class among the first k neighbours whose
    similarity is >= ``min_similarity`` (a SIMILARITY threshold; tc-transfer compared cosine
    similarities with ``<=``, which inverts it). Ties go to the class met first in rank order;
    rows with no qualifying neighbour fall back to the top-1 neighbour."""
    nl = np.asarray(nbr_labels)[:, :k]
    valid = nl >= 0
    if min_similarity is not None:
        if nbr_scores is None:
            raise ValueError("min_similarity needs nbr_scores")
        valid &= np.asarray(nbr_scores)[:, :k] >= min_similarity
    pred = np.empty(len(nl), dtype=nl.dtype)
    for s in range(0, len(nl), chunk):       # chunks bound the [rows, k, k] comparison
        a, v = nl[s:s + chunk], valid[s:s + chunk]
        same = (a[:, :, None] == a[:, None, :]) & v[:, None, :]
        votes = np.where(v, same.sum(2), -1)
        best = np.argmax(votes, axis=1)           # argmax returns the first (best-ranked) tie
        pred[s:s + chunk] = np.where(v.any(1), a[np.arange(len(a)), best], a[:, 0])
    return pred


@register("knn_majority_acc", "identification")
def knn_majority_accuracy(nbr_labels, query_labels, k: int = 5, nbr_scores=None,
                          min_similarity: Optional[float] = None) -> float:
    nl, ql = _check(nbr_labels, query_labels, k)
    return float(np.mean(majority_vote(nl, k, nbr_scores, min_similarity) == ql))


def identification_report(nbr_labels, query_labels, ks=(1, 5, 10), majority_k: int = 5,
                          nbr_scores=None) -> dict:
    depth = np.asarray(nbr_labels).shape[1]
    out = {"n_queries": int(len(query_labels)),
           "knn_acc": knn_top1_accuracy(nbr_labels, query_labels)}
    mk = min(majority_k, depth)
    out[f"knn_majority_acc@{mk}"] = knn_majority_accuracy(nbr_labels, query_labels, mk, nbr_scores)
    for k in ks:
        if k <= depth:
            out[f"rank{k}"] = cmc_at_k(nbr_labels, query_labels, k)
    return out
