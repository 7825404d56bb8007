"""Open-set identification, numpy only: some queries (non-mated) belong to no gallery class, and a
search must both reject them and name the class of the others (face 1:N search with non-mated
probes, as IJB-C and NIST FRVT report it; unknown speakers; traffic of applications never
trained on).

Inputs per query: ``top1_label`` and ``top1_score`` of its nearest gallery row (a similarity:
higher = closer), its true label, and ``mated`` (its label is in the gallery).

- ``FPIR(t)``: share of non-mated queries whose top-1 score is above ``t`` (falsely accepted).
- ``DIR(t)`` (detection and identification rate, rank 1; 1 - FNIR): share of mated queries whose
  top-1 row has their label AND a score above ``t``.
- ``dir@fpir=F``: DIR at the threshold ``t`` = the ``floor(F * N_nonmated) + 1``-th highest
  non-mated score, accepting scores strictly above it, so the FPIR reached is at most ``F``
  (fewer than ``F * N`` accepted when scores tie); with fewer than ``1 / F`` non-mated queries the
  rate cannot be measured and is left out.
- ``unknown_auroc``: the probability that a random mated query's top-1 score exceeds a random
  non-mated query's (ties count one half): how well the score alone tells known from unknown.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

FPIRS = (0.001, 0.01, 0.1)


def dir_at_fpir(correct: np.ndarray, mated_scores: np.ndarray, nonmated_scores: np.ndarray,
                fpir: float) -> float:
    """DIR of the mated queries (``correct`` [M] top-1 label right, ``mated_scores`` [M]) at the
    threshold that keeps the non-mated false acceptances at most ``fpir`` (see the module)."""
    nm = np.sort(np.asarray(nonmated_scores, np.float64))[::-1]
    k = int(np.floor(fpir * len(nm) + 1e-9))
    t = nm[k] if k < len(nm) else -np.inf
    return float(np.mean(np.asarray(correct) & (np.asarray(mated_scores) > t)))


def dir_fpir_curve(correct: np.ndarray, mated_scores: np.ndarray,
                   nonmated_scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(FPIR [k], DIR [k]) with a threshold at every distinct non-mated score, highest first, and
    a last one below every score (FPIR 1): the open-set identification curve (NIST plots FNIR =
    1 - DIR against FPIR). Scores strictly above a threshold are accepted, as in
    :func:`dir_at_fpir`; ``correct`` [M] and ``mated_scores`` [M] as there."""
    nm = np.sort(np.asarray(nonmated_scores, np.float64))
    ok = np.sort(np.asarray(mated_scores, np.float64)[np.asarray(correct, bool)])
    t = np.r_[np.unique(nm)[::-1], -np.inf]
    fpir = (len(nm) - np.searchsorted(nm, t, side="right")) / max(1, len(nm))
    dir_ = (len(ok) - np.searchsorted(ok, t, side="right")) / max(1, len(mated_scores))
    return fpir, dir_


def unknown_auroc(mated_scores: np.ndarray, nonmated_scores: np.ndarray) -> float:
    """Mann-Whitney estimate of P(mated score > non-mated score), ties one half."""
    m = np.asarray(mated_scores, np.float64)
    n = np.asarray(nonmated_scores, np.float64)
    allv = np.concatenate([m, n])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    start = 0
    for i in range(1, len(sv) + 1):          # average ranks over ties
        if i == len(sv) or sv[i] != sv[start]:
            ranks[order[start:i]] = (start + i + 1) / 2.0
            start = i
    u = ranks[:len(m)].sum() - len(m) * (len(m) + 1) / 2.0
    return float(u / (len(m) * len(n)))


def open_set_report(top1_label: np.ndarray, top1_score: np.ndarray, query_labels: np.ndarray,
                    mated: np.ndarray, fpirs: Sequence[float] = FPIRS) -> Dict[str, float]:
    """The open-set metrics (module docstring) of ``n`` queries: ``top1_label``, ``top1_score``,
    ``query_labels`` [n], ``mated`` [n] bool. Empty when every query is mated (closed set)."""
    mated = np.asarray(mated, bool)
    if mated.all():
        return {}
    correct = (np.asarray(top1_label) == np.asarray(query_labels))[mated]
    s = np.asarray(top1_score, np.float64)
    out: Dict[str, float] = {"n_mated": int(mated.sum()), "n_nonmated": int((~mated).sum())}
    if not mated.any():
        return out
    out["knn_acc_mated"] = float(correct.mean())
    out["unknown_auroc"] = unknown_auroc(s[mated], s[~mated])
    for f in fpirs:
        if f * out["n_nonmated"] >= 1:
            out[f"dir@fpir={f:g}"] = dir_at_fpir(correct, s[mated], s[~mated], f)
    return out
