"""Top-k merging across index shards, the GPU k-limit split, and an exact numpy baseline.

Convention: ``D`` [n, k] scores, ``I`` [n, k] int64 ids, best first, ``-1`` ids pad rows with
fewer than k results (their scores are -inf for similarity, +inf for distance).
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np

SearchFn = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]

GPU_MAX_K = 2048   # faiss GPU k-selection limit (faiss#2103, #1501, #4008)


def _worst(higher_is_better: bool) -> float:
    return -np.inf if higher_is_better else np.inf


def merge_topk(Ds: Sequence[np.ndarray], Is: Sequence[np.ndarray], k: int,
               higher_is_better: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Merge per-shard results ([n, k_j] each) into the global top-k [n, k]."""
    D = np.concatenate(Ds, axis=1).astype(np.float32, copy=False)
    I = np.concatenate(Is, axis=1)
    D = np.where(I < 0, _worst(higher_is_better), D)      # faiss pads with -1 / -3.4e38 / +inf
    key = -D if higher_is_better else D
    kk = min(k, D.shape[1])
    part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if D.shape[1] > kk else \
        np.broadcast_to(np.arange(D.shape[1]), D.shape).copy()
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), 1, kind="stable"), 1)
    D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
    if kk < k:
        D = np.pad(D, ((0, 0), (0, k - kk)), constant_values=_worst(higher_is_better))
        I = np.pad(I, ((0, 0), (0, k - kk)), constant_values=-1)
    return D, I


def search_k_limited(parts: Sequence[SearchFn], fallback: SearchFn, q: np.ndarray, k: int,
                     max_k: int = GPU_MAX_K, higher_is_better: bool = True):
    """Exact top-k over disjoint ``parts`` whose search only supports k <= ``max_k``.

    Each part returns at most min(k, max_k). A part that returned a full ``max_k`` list may
    hold more of the true top-k, unless its worst returned score is strictly worse than the
    merged k-th score (then nothing it withheld can enter). Rows where that check fails are
    re-searched with ``fallback`` (e.g. the CPU index, which has no limit): no silent truncation.
    Returns (D, I, n_fallback_rows).
    """
    kk = min(k, max_k)
    Ds, Is, worst_full = [], [], []
    for p in parts:
        D, I = p(q, kk)
        Ds.append(D)
        Is.append(I)
        full = (I[:, -1] >= 0) if kk < k else np.zeros(len(q), bool)
        worst_full.append(np.where(full, D[:, -1], _worst(higher_is_better)))
    D, I = merge_topk(Ds, Is, k, higher_is_better)
    kth = D[:, -1]
    W = np.stack(worst_full, axis=1)
    unsafe = (W >= kth[:, None]) if higher_is_better else (W <= kth[:, None])
    unsafe &= np.isfinite(W)
    bad = np.flatnonzero(unsafe.any(axis=1))
    if len(bad):
        D[bad], I[bad] = fallback(q[bad], k)
    return D, I, len(bad)


def exact_topk(q: np.ndarray, base: np.ndarray, k: int, ids=None, chunk: int = 4096,
               base_chunk: int = 262144):
    """Brute-force inner-product top-k with numpy (a reference and benchmark baseline).
    q [n, d], base [N, d] -> D, I [n, k]; memory is bounded by chunk x base_chunk scores."""
    ids = np.arange(len(base), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    outD, outI = [], []
    for s in range(0, len(q), chunk):
        Ds: List[np.ndarray] = []
        Is: List[np.ndarray] = []
        for b in range(0, len(base), base_chunk):
            S = q[s:s + chunk] @ base[b:b + base_chunk].T
            kk = min(k, S.shape[1])
            p = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
            Ds.append(np.take_along_axis(S, p, 1))
            Is.append(ids[b:b + base_chunk][p])
        D, I = merge_topk(Ds, Is, k)
        outD.append(D)
        outI.append(I)
    return np.concatenate(outD), np.concatenate(outI)


def same_neighbours(D_ref: np.ndarray, I_ref: np.ndarray, D: np.ndarray, I: np.ndarray,
                    rtol: float = 1e-5, atol: float = 1e-5) -> np.ndarray:
    """Tie-tolerant comparison of two exact top-k results, per row (bool [n]).

    Scores must agree position by position; ids may differ only where the score ties the
    row's k-th score (the boundary), or among equal scores (checked as sets of strictly
    better-than-boundary ids)."""
    ok = np.isclose(D_ref, D, rtol=rtol, atol=atol).all(axis=1)
    for i in np.flatnonzero(ok):
        kth = D_ref[i, -1]
        strict = ~np.isclose(D_ref[i], kth, rtol=rtol, atol=atol)
        strict_b = ~np.isclose(D[i], kth, rtol=rtol, atol=atol)
        ok[i] = set(I_ref[i][strict].tolist()) == set(I[i][strict_b].tolist())
    return ok
