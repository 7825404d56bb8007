"""TF-IDF nearest-neighbour XMC baseline (computed in the same run as the trained heads).

Documents are the ``tokens`` of each row with their ``token_weights`` (1.0 per token when the
column is absent; repeated tokens add up). ``weighting="auto"`` picks the document vectors:
when every value is a whole number (term counts, e.g. the WordNet importer) it is TF-IDF =
sublinear tf (1 + log tf) x smoothed idf (ln((1 + N) / (1 + df)) + 1) fitted on the training
split; otherwise the imported values are used as they are (e.g. the tf-idf features of the
Extreme Classification Repository files). Either way rows are L2-normalised.
For each test row: cosine similarity to every training row (sparse GEMM, query chunks), the
``k`` most similar training rows vote for their labels with weight sim^power, and labels are
ranked by total vote. Metrics via :mod:`xclass.eval.metrics` (P@k, nDCG@k, PSP@k, ...).
"""
from __future__ import annotations

import sys
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from xclass.eval.io import read_table
from xclass.eval.metrics import LabelSets, Ranking, inverse_propensity, xmc_metrics


def read_split(path: str) -> Tuple[sp.csr_matrix, LabelSets, int]:
    """(feature CSR [n, V], label sets, V) of an XMC Parquet split (tokens, labels and, when
    present, token_weights; repeated tokens of a row add up)."""
    names = pq.ParquetFile(path).schema_arrow.names
    cols = ["tokens", "labels"] + (["token_weights"] if "token_weights" in names else [])
    t = read_table(path, columns=cols)
    tok = t.column("tokens").combine_chunks()
    lab = t.column("labels").combine_chunks()
    t_off = tok.offsets.to_numpy().astype(np.int64)
    vals = tok.flatten().to_numpy().astype(np.int64)
    n = len(tok)
    V = int(vals.max(initial=0)) + 1
    wts = np.ones(len(vals), np.float32)
    if "token_weights" in cols:
        w = t.column("token_weights").combine_chunks()
        w_off = w.offsets.to_numpy().astype(np.int64)
        if np.array_equal(np.diff(w_off), np.diff(t_off)):  # else (e.g. written empty): counts
            wts = w.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    rows = np.repeat(np.arange(n), np.diff(t_off))
    X = sp.csr_matrix((wts, (rows, vals)), shape=(n, V))
    X.sum_duplicates()
    l_off = lab.offsets.to_numpy().astype(np.int64)
    return X, LabelSets(l_off - l_off[0], lab.flatten().to_numpy().astype(np.int64)), V


def fit_idf(X: sp.csr_matrix) -> np.ndarray:
    df = np.bincount(X.indices, minlength=X.shape[1])
    return (np.log((1.0 + X.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)


def is_counts(X: sp.csr_matrix) -> bool:
    """True when every stored value is a positive whole number (term counts)."""
    return bool(np.all((X.data >= 1) & (X.data == np.round(X.data))))


def tfidf(X: sp.csr_matrix, idf: Optional[np.ndarray], width: Optional[int] = None) -> sp.csr_matrix:
    """Rows of ``X`` [n, V] -> L2-normalised [n, width]; with ``idf`` [width] they are counts
    turned into sublinear tf x idf, without it they are used as given (imported weights)."""
    width = len(idf) if idf is not None else (width or X.shape[1])
    X = X.astype(np.float32, copy=True)
    if X.shape[1] < width:
        X.resize((X.shape[0], width))
    X = X[:, :width]
    if idf is not None:
        X.data = 1.0 + np.log(X.data)
        X = X @ sp.diags(idf)
    norm = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norm, 1e-12)) @ X)


def label_matrix(labels: LabelSets, num_labels: int) -> sp.csr_matrix:
    """Binary CSR ``[n, num_labels]`` of label sets."""
    return sp.csr_matrix((np.ones(len(labels.indices), np.float32), labels.indices, labels.indptr),
                         shape=(labels.n_rows, num_labels))


def top_labels(scores: np.ndarray, K: int) -> np.ndarray:
    """Dense ``[b, L]`` scores -> ``[b, min(K, L)]`` label ids, best first, -1 where the score is <= 0."""
    K = min(K, scores.shape[1])
    part = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    best = np.take_along_axis(part, order, 1)
    return np.where(np.take_along_axis(scores, best, 1) > 0, best, -1)


def neighbours(Q: sp.csr_matrix, D: sp.csr_matrix, k: int, chunk: int = 256,
               exclude_self: bool = False) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """Per chunk of query rows from ``a``: ``(a, sims [c, k], ids [c, k])``, the ``k`` rows of ``D``
    with the largest dot product (cosine for L2-normalised rows), unordered. ``exclude_self``:
    ``Q`` is ``D`` and row i's similarity to itself counts as 0."""
    DT = D.T.tocsr()
    for a in range(0, Q.shape[0], chunk):
        S = (Q[a:a + chunk] @ DT).toarray()
        if exclude_self:
            r = np.arange(S.shape[0])
            S[r, a + r] = 0.0
        kk = min(k, S.shape[1])
        nn = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        yield a, np.take_along_axis(S, nn, 1), nn


def vote(w: np.ndarray, nn: np.ndarray, Y: sp.csr_matrix) -> np.ndarray:
    """Label scores ``[c, L]``: the sum over each query's neighbours ``nn [c, k]`` (rows of ``Y
    [N, L]``) of their weights ``w [c, k]`` times their label rows."""
    c, k = nn.shape
    V = sp.csr_matrix((w.ravel(), nn.ravel(), np.arange(0, nn.size + 1, k)), shape=(c, Y.shape[0]))
    return (V @ Y).toarray()


def knn_rank(Q: sp.csr_matrix, D: sp.csr_matrix, d_labels: LabelSets, num_labels: int, k: int = 50,
             top: int = 100, power: float = 1.0, chunk: int = 256, progress: bool = True) -> np.ndarray:
    """[n_q, top] label ids ranked by similarity-weighted votes of the k nearest training rows."""
    Y = label_matrix(d_labels, num_labels)
    out = np.full((Q.shape[0], top), -1, np.int64)
    for a, sims, nn in neighbours(Q, D, k, chunk):
        best = top_labels(vote(sims ** power, nn, Y), top)
        out[a:a + chunk, :best.shape[1]] = best
        if progress:
            print(f"\r[tfidf-knn] {min(a + chunk, Q.shape[0])}/{Q.shape[0]} queries", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return out


def features(Xtr: sp.csr_matrix, Xte: sp.csr_matrix, weighting: str = "auto") -> Tuple[sp.csr_matrix, sp.csr_matrix, str]:
    """(train, test) L2-normalised document vectors and the weighting used: ``tfidf`` (fitted on
    train), ``given`` (imported values as they are) or ``auto`` (tfidf for counts, else given)."""
    if weighting not in ("auto", "tfidf", "given"):
        raise ValueError(f"weighting must be auto, tfidf or given, got {weighting!r}")
    if weighting == "auto":
        weighting = "tfidf" if is_counts(Xtr) and is_counts(Xte) else "given"
    idf = fit_idf(Xtr) if weighting == "tfidf" else None
    return tfidf(Xtr, idf), tfidf(Xte, idf, Xtr.shape[1]), weighting


def tfidf_knn_baseline(train: str, test: str, num_labels: int, ks: Sequence[int] = (1, 3, 5), k: int = 50,
                       power: float = 1.0, a: float = 0.55, b: float = 1.5, progress: bool = True,
                       max_test: Optional[int] = None, weighting: str = "auto",
                       inv_prop: Optional[np.ndarray] = None) -> Dict[str, float]:
    """XMC metrics (fractions) of the TF-IDF kNN baseline on ``test``; PSP with ``inv_prop``
    [num_labels] or else propensities (a, b) of the train split's label counts."""
    Xtr, Ltr, V = read_split(train)
    Xte, Lte, _ = read_split(test)
    if max_test:
        Xte = Xte[:max_test]
        Lte = LabelSets(Lte.indptr[:max_test + 1], Lte.indices[:Lte.indptr[max_test]])
    Dtr, Dte, used = features(Xtr, Xte, weighting)
    I = knn_rank(Dte, Dtr, Ltr, num_labels, k=k, top=max(ks), power=power, progress=progress)
    if inv_prop is None:
        inv_prop = inverse_propensity(np.bincount(Ltr.indices, minlength=num_labels), Ltr.n_rows, a, b)
    r = Ranking.build(I, Lte, inv_prop)
    out = xmc_metrics(r, ks)
    out.update({"n_queries": int(Lte.n_rows), "k_neighbours": k, "weighting": used})
    return out
