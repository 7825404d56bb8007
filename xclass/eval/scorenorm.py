"""Score normalisation for verification trials: adaptive symmetric normalisation (AS-norm).

For a trial (e, t) with raw cosine score s(e, t) and a cohort of embeddings C (impostors,
usually training speakers):

    top_N(e)   = the N largest cosine scores of e against the cohort
    mu_e, sd_e = mean and (population, ddof=0) std of top_N(e); likewise mu_t, sd_t for t
    s_as(e, t) = ( (s - mu_e) / sd_e + (s - mu_t) / sd_t ) / 2

(Matejka et al., Interspeech 2017; the "adaptive" part is restricting the statistics to the
N cohort members closest to each side.) Statistics depend only on one embedding, so they are
computed once per distinct enrollment/test embedding, in chunks (memory: chunk x |C| scores).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

_EPS = 1e-12


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation [n, d] -> float32 [n, d] (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def pair_dots(x: np.ndarray, ra: np.ndarray, rb: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """float64 [m] of the row-wise dot products ``x[ra[i]] . x[rb[i]]``, ``chunk`` pairs at a time
    (memory O(chunk d), not O(m d): IJB-C has 15.7 million template pairs)."""
    out = np.empty(len(ra), np.float64)
    for s in range(0, len(ra), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", x[ra[s:s + chunk]], x[rb[s:s + chunk]])
    return out


def cohort_stats(x: np.ndarray, cohort: np.ndarray, top_n: int,
                 chunk: int = 2048) -> Tuple[np.ndarray, np.ndarray]:
    """x [n, d], cohort [C, d], both unit rows -> (mean [n], std [n]) float64 of each row's
    ``top_n`` largest cohort scores."""
    import torch
    if not 1 <= top_n <= len(cohort):
        raise ValueError(f"AS-norm top-N must be in [1, {len(cohort)}] (the cohort size), got {top_n}")
    c = torch.from_numpy(np.ascontiguousarray(cohort, dtype=np.float32))
    mean = np.empty(len(x))
    std = np.empty(len(x))
    for s in range(0, len(x), chunk):
        S = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk], dtype=np.float32)) @ c.T
        top = torch.topk(S, top_n, dim=1).values.double()
        mean[s:s + len(top)] = top.mean(1).numpy()
        std[s:s + len(top)] = top.std(1, correction=0).numpy()
    return mean, std


def as_norm(scores: np.ndarray, enroll_stats: Tuple[np.ndarray, np.ndarray],
            test_stats: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Symmetric normalisation of raw trial scores [m] given per-trial (mean, std) [m] of the
    enrollment side and of the test side."""
    (me, se), (mt, st) = enroll_stats, test_stats
    s = np.asarray(scores, dtype=np.float64)
    return 0.5 * ((s - me) / np.maximum(se, _EPS) + (s - mt) / np.maximum(st, _EPS))


def as_norm_trials(x: np.ndarray, rows_e: np.ndarray, rows_t: np.ndarray, cohort: np.ndarray,
                   top_n: int) -> np.ndarray:
    """AS-norm scores [m] of trials (x[rows_e[i]], x[rows_t[i]]); x [n, d] and cohort [C, d]
    unit rows. Cohort statistics are computed once per distinct row used by any trial."""
    used, inv = np.unique(np.concatenate([rows_e, rows_t]), return_inverse=True)
    mean, std = cohort_stats(x[used], cohort, top_n)
    ie, it = inv[: len(rows_e)], inv[len(rows_e):]
    raw = np.einsum("ij,ij->i", x[rows_e], x[rows_t]).astype(np.float64)
    return as_norm(raw, (mean[ie], std[ie]), (mean[it], std[it]))
