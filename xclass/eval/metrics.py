"""Extreme-classification ranking metrics (numpy only) and the METRICS registry.

Conventions follow the Extreme Classification Repository / pyxclib ``xc_metrics``:

* ``P@k``  = mean_i (1/k) sum_{r<=k} y[i, pi_i(r)]   (divides by k even when |y_i| < k)
* ``nDCG@k`` = mean_i DCG_i@k / IDCG(min(k, |y_i|))    (IDCG(0) is taken as IDCG(k): value 0)
* ``PSP@k`` = [mean_i (1/k) sum_r w y] / [same for the propensity-ideal ordering of y_i]
* ``PSnDCG@k``: nDCG with propensity-weighted gains, divided by the ideal ordering's value
* ``R@k`` = mean_i |top-k ∩ y_i| / max(|y_i|, 1)     (empty rows stay in the mean, as P@k)
* ``hits@k`` = mean_i [top-k ∩ y_i non-empty]

Rows with no labels are kept (``empty_rows='keep'``, the pyxclib default) unless dropped with
:meth:`Ranking.drop_empty`.

Every registered metric has the attributes ``higher_is_better`` and ``protocol``: ``"xmc"`` metrics are
``fn(r: Ranking, k: int) -> float``; the verification and identification metrics live in
:mod:`xclass.eval.verification` / :mod:`xclass.eval.identification` with their own signatures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from xclass.registry import Registry

METRICS: Registry = Registry("metric")


def register(name: str, protocol: str, higher_is_better: bool = True) -> Callable:
    """Register ``fn`` under ``name``, tagged with ``protocol`` and ``higher_is_better``."""

    def deco(fn):
        fn.protocol = protocol
        fn.higher_is_better = higher_is_better
        return METRICS.register(name)(fn)

    return deco


# ----------------------------------------------------------------------------- labels
@dataclass
class LabelSets:
    """Ground-truth label sets as CSR: row i owns ``indices[indptr[i]:indptr[i+1]]`` (int64)."""

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> "LabelSets":
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = [int(x) for r in rows for x in r]
        return cls(indptr, np.asarray(flat, dtype=np.int64))

    @classmethod
    def from_dense(cls, y: np.ndarray) -> "LabelSets":
        """``y`` [n, L] 0/1 -> label sets of the non-zero columns."""
        rows, cols = np.nonzero(y)
        indptr = np.searchsorted(rows, np.arange(y.shape[0] + 1)).astype(np.int64)
        return cls(indptr, cols.astype(np.int64))

    def row_ids(self) -> np.ndarray:
        """Row index of every entry of ``indices`` [nnz]."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.indptr))


def inverse_propensity(label_counts: np.ndarray, n_train: int, a: float = 0.55,
                       b: float = 1.5) -> np.ndarray:
    """Jain et al. (2016): w_l = 1 + C (N_l + B)^-A, C = (ln N - 1)(B + 1)^A. [L] float64."""
    c = (np.log(n_train) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * np.power(np.asarray(label_counts, dtype=np.float64) + b, -a)


def _pair_keys(rows: np.ndarray, labels: np.ndarray, width: int) -> np.ndarray:
    return rows.astype(np.int64) * width + labels.astype(np.int64)


def remove_pairs(topk: np.ndarray, scores: Optional[np.ndarray], pairs: np.ndarray,
                 k_out: int):
    """Drop the (row, label) ``pairs`` [m, 2] from ranked lists ``topk`` [n, K'] (-1 = pad),
    keeping order, and truncate to ``k_out`` columns (pad -1 / -inf). Returns (topk, scores)."""
    n, kk = topk.shape
    width = int(max(topk.max(initial=0), pairs[:, 1].max(initial=0))) + 1
    rows = np.repeat(np.arange(n, dtype=np.int64)[:, None], kk, axis=1)
    drop = np.isin(_pair_keys(rows, topk, width), _pair_keys(pairs[:, 0], pairs[:, 1], width))
    drop |= topk < 0
    # stable sort puts kept entries first, in their original order
    order = np.argsort(drop, axis=1, kind="stable")[:, :k_out]
    kept = ~np.take_along_axis(drop, order, axis=1)
    out = np.where(kept, np.take_along_axis(topk, order, axis=1), -1)
    out_s = None
    if scores is not None:
        out_s = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
    if out.shape[1] < k_out:
        pad = k_out - out.shape[1]
        out = np.pad(out, ((0, 0), (0, pad)), constant_values=-1)
        if out_s is not None:
            out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out, out_s


# ----------------------------------------------------------------------------- ranking
@dataclass
class Ranking:
    """Everything the XMC metrics need, computed once from ranked predictions.

    hits  [n, K] bool     top-k entry r of row i is a true label
    n_true [n] int64      |y_i| (unique labels)
    gain  [n, K] float64  w[pred] * hit (None without propensities)
    ideal [n, K] float64  true-label weights of row i sorted descending, 0-padded (None without)
    """

    hits: np.ndarray
    n_true: np.ndarray
    gain: Optional[np.ndarray] = None
    ideal: Optional[np.ndarray] = None

    @property
    def depth(self) -> int:
        return self.hits.shape[1]

    @classmethod
    def build(cls, topk: np.ndarray, truth: LabelSets,
              inv_prop: Optional[np.ndarray] = None) -> "Ranking":
        """``topk`` [n, K] int label ids best first (-1 pads); ``inv_prop`` [L] or None."""
        topk = np.asarray(topk)
        if topk.ndim != 2 or topk.shape[0] != truth.n_rows:
            raise ValueError(f"top-k shape {topk.shape} does not match {truth.n_rows} label rows")
        n, depth = topk.shape
        width = int(max(topk.max(initial=0), truth.indices.max(initial=0))) + 1
        true_keys = np.unique(_pair_keys(truth.row_ids(), truth.indices, width))
        rows = np.repeat(np.arange(n, dtype=np.int64)[:, None], depth, axis=1)
        hits = np.isin(_pair_keys(rows, topk, width), true_keys) & (topk >= 0)
        n_true = np.bincount(true_keys // width, minlength=n).astype(np.int64)
        if inv_prop is None:
            return cls(hits, n_true)
        w = np.asarray(inv_prop, dtype=np.float64)
        gain = np.where(hits, w[np.clip(topk, 0, len(w) - 1)], 0.0)
        ideal = _ideal_gains(true_keys // width, w[true_keys % width], n, depth)
        return cls(hits, n_true, gain, ideal)

    def drop_empty(self) -> "Ranking":
        """The ``empty_rows='drop'`` variant: remove rows with no true label."""
        keep = self.n_true > 0
        pick = (lambda a: None if a is None else a[keep])
        return Ranking(self.hits[keep], self.n_true[keep], pick(self.gain), pick(self.ideal))

    @staticmethod
    def concat(parts: Sequence["Ranking"]) -> "Ranking":
        cat = (lambda name: None if getattr(parts[0], name) is None
               else np.concatenate([getattr(p, name) for p in parts]))
        return Ranking(cat("hits"), cat("n_true"), cat("gain"), cat("ideal"))


def _ideal_gains(rows: np.ndarray, weights: np.ndarray, n: int, depth: int) -> np.ndarray:
    """Per row, the true-label weights sorted descending into [n, depth] (0-padded)."""
    order = np.lexsort((-weights, rows))            # by row, then weight descending
    rows, weights = rows[order], weights[order]
    start = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - start
    out = np.zeros((n, depth), dtype=np.float64)
    sel = rank < depth
    out[rows[sel], rank[sel]] = weights[sel]
    return out


def _check_k(r: Ranking, k: int) -> None:
    if not 1 <= k <= r.depth:
        raise ValueError(f"k={k} outside 1..{r.depth} (depth of the ranked lists)")


def _discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k) + 2.0)


def _idcg(n_true: np.ndarray, k: int) -> np.ndarray:
    cum = np.cumsum(_discount(k))
    m = np.minimum(n_true, k)
    return np.where(m > 0, cum[np.maximum(m, 1) - 1], cum[-1])


def _need_prop(r: Ranking, name: str) -> None:
    if r.gain is None:
        raise ValueError(f"{name} needs inverse propensities: build the Ranking with inv_prop")


@register("P", "xmc")
def precision_at_k(r: Ranking, k: int) -> float:
    _check_k(r, k)
    return float(np.mean(r.hits[:, :k].sum(1) / k)) if len(r.hits) else float("nan")


@register("nDCG", "xmc")
def ndcg_at_k(r: Ranking, k: int) -> float:
    _check_k(r, k)
    dcg = r.hits[:, :k] @ _discount(k)
    return float(np.mean(dcg / _idcg(r.n_true, k))) if len(r.hits) else float("nan")


@register("PSP", "xmc")
def psp_at_k(r: Ranking, k: int) -> float:
    _check_k(r, k)
    _need_prop(r, "PSP")
    return float(r.gain[:, :k].sum() / r.ideal[:, :k].sum())


@register("PSnDCG", "xmc")
def psndcg_at_k(r: Ranking, k: int) -> float:
    _check_k(r, k)
    _need_prop(r, "PSnDCG")
    idcg = _idcg(r.n_true, k)
    num = (r.gain[:, :k] @ _discount(k)) / idcg
    den = (r.ideal[:, :k] @ _discount(k)) / idcg
    return float(num.sum() / den.sum())


@register("R", "xmc")
def recall_at_k(r: Ranking, k: int) -> float:
    _check_k(r, k)
    return float(np.mean(r.hits[:, :k].sum(1) / np.maximum(r.n_true, 1))) if len(r.hits) \
        else float("nan")


@register("hits", "xmc")
def hits_at_k(r: Ranking, k: int) -> float:
    _check_k(r, k)
    return float(np.mean(r.hits[:, :k].any(1))) if len(r.hits) else float("nan")


def xmc_metrics(r: Ranking, ks: Sequence[int] = (1, 3, 5),
                names: Optional[Sequence[str]] = None) -> dict:
    """All XMC metrics at every k as ``{"P@1": ..., "PSP@5": ...}``; PS* only with propensities."""
    names = names or [n for n in METRICS.names() if METRICS.get(n).protocol == "xmc"]
    out = {}
    for name in names:
        if name.startswith("PS") and r.gain is None:
            continue
        for k in ks:
            if k <= r.depth:
                out[f"{name}@{k}"] = METRICS.get(name)(r, k)
    return out
