"""Verification metrics (face 1:1, speaker trials) on precomputed pair scores, numpy only.

Every function takes ``scores`` [n] float (higher = more likely the same identity) and
``target`` [n] bool (True = same identity / target trial). Registered metrics
(``protocol = "verification"``) are ``fn(scores, target, **params) -> float``.

* ROC: one point per distinct score threshold ("accept if score >= t"), plus (0, 0).
* EER: idx = argmin |FNR - FPR| over the FULL ROC (every distinct score), EER = max(FPR, FNR) there;
  voxceleb_trainer ``tuneThreshold`` applies the same rule to sklearn's thinned ROC
  (``drop_intermediate=True``), which can differ on small or tied score sets (docs/evaluation.md).
* minDCF (NIST SRE16): min_t C_miss P_miss P_tgt + C_fa P_fa (1 - P_tgt), divided by
  min(C_miss P_tgt, C_fa (1 - P_tgt)).
* TAR@FAR: ``rule="nearest"`` takes the best TPR at the ROC FPR nearest the target
  (insightface ``eval_ijbc``, except that ties at that FPR take the best TPR rather than the
  first point); ``rule="le"`` the best TPR with FPR <= target.
* k-fold accuracy (LFW protocol): the threshold maximising accuracy on the other folds is
  applied to the held-out fold; mean and std over folds. Folds are stratified and independent of
  the pairs' order (:func:`stratified_folds`): LFW's own file lists 300 genuine + 300 impostor
  pairs per fold, so insightface's contiguous split is balanced there but would put only one
  kind of pair in a fold of a file sorted by label. Ties between thresholds of equal training
  accuracy go to the HIGHEST score threshold (the strictest accept), which is what insightface's
  ``argmax`` over its ascending L2-distance grid picks (smallest distance = highest cosine).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from xclass.eval.metrics import register


def _validate(scores: np.ndarray, target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(target).astype(bool).ravel()
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and target {t.shape} differ in length")
    if not np.isfinite(s).all():
        raise ValueError(f"non-finite score at row {int(np.flatnonzero(~np.isfinite(s))[0])}")
    if t.all() or not t.any():
        raise ValueError("verification needs both target and non-target pairs")
    return s, t


def roc(scores: np.ndarray, target: np.ndarray):
    """Full ROC: returns (fpr [m], tpr [m], thresholds [m]), fpr/tpr non-decreasing;
    the first point is (0, 0) with threshold +inf (accept nothing)."""
    s, t = _validate(scores, target)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]   # end of each tie group
    tp = np.cumsum(t)[last]
    fp = np.cumsum(~t)[last]
    tpr = np.r_[0.0, tp / t.sum()]
    fpr = np.r_[0.0, fp / (~t).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def det_curve(scores: np.ndarray, target: np.ndarray):
    """(fpr [m], fnr [m], thresholds [m]) for a DET plot."""
    fpr, tpr, thr = roc(scores, target)
    return fpr, 1.0 - tpr, thr


@register("eer", "verification", higher_is_better=False)
def eer(scores: np.ndarray, target: np.ndarray) -> float:
    fpr, tpr, _ = roc(scores, target)
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float(max(fpr[i], fnr[i]))


@register("min_dcf", "verification", higher_is_better=False)
def min_dcf(scores: np.ndarray, target: np.ndarray, p_target: float = 0.01,
            c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    fpr, tpr, _ = roc(scores, target)
    # the ROC's last point accepts everything (fpr = 1); add nothing else: (0,0) is included
    cdet = c_miss * (1.0 - tpr) * p_target + c_fa * fpr * (1.0 - p_target)
    return float(cdet.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


@register("tar_at_far", "verification")
def tar_at_far(scores: np.ndarray, target: np.ndarray, far: float = 1e-3,
               rule: str = "nearest") -> float:
    fpr, tpr, _ = roc(scores, target)
    if rule == "nearest":
        # among ROC points at the nearest FPR take the best TPR: a plain argmin would return
        # the (0, 0) start point whenever the target is below 1 / n_nontarget
        near = fpr[int(np.argmin(np.abs(fpr - far)))]
        return float(tpr[fpr == near].max())
    if rule == "le":
        return float(tpr[fpr <= far].max())
    raise ValueError(f"unknown TAR@FAR rule {rule!r}; use 'nearest' or 'le'")


def _accuracy_per_threshold(s: np.ndarray, t: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Accuracy of "same iff score > thr" for every threshold in ``thr`` [m]."""
    pos = np.sort(s[t])
    neg = np.sort(s[~t])
    tp = len(pos) - np.searchsorted(pos, thr, side="right")     # pos with s > thr
    tn = np.searchsorted(neg, thr, side="right")                # neg with s <= thr
    return (tp + tn) / len(s)


def _candidate_thresholds(s: np.ndarray) -> np.ndarray:
    u = np.unique(s)
    return np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2.0, u[-1]]


def stratified_folds(scores: np.ndarray, target: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index [n] int of every pair: each fold holds genuine and impostor pairs in the same
    proportion (counts differ by at most one per kind), assigned by a seeded permutation of each
    kind's pairs taken in score order. The multiset of (score, target) per fold depends only on
    the multiset of pairs, never on the order of the file (equal-score pairs of one kind are
    interchangeable), so a shuffled or label-sorted pairs file gives the same accuracy."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(target).astype(bool).ravel()
    rng = np.random.default_rng(seed)
    fold = np.empty(len(s), dtype=np.int64)
    offset = 0
    for kind in (True, False):
        idx = np.flatnonzero(t == kind)
        idx = idx[np.argsort(s[idx], kind="stable")]              # canonical order: by score
        fold[idx[rng.permutation(len(idx))]] = (offset + np.arange(len(idx))) % n_folds
        offset = (offset + len(idx)) % n_folds                    # keep fold sizes within one
    return fold


def _best_threshold(s: np.ndarray, t: np.ndarray, grid: np.ndarray) -> float:
    """The grid threshold of best accuracy; ties -> the highest threshold (see module doc)."""
    acc = _accuracy_per_threshold(s, t, grid)
    return float(grid[int(np.flatnonzero(acc == acc.max())[-1])])


def check_folds(folds: np.ndarray, n: int) -> np.ndarray:
    """``folds`` as int64 [n] when they number n pairs 0..K-1 with K >= 2 and every fold used;
    a ValueError otherwise."""
    fold = np.asarray(folds).ravel()
    if len(fold) != n or not np.issubdtype(fold.dtype, np.integer) or not len(fold) or fold.min() < 0 \
            or fold.max() < 1 or len(np.unique(fold)) != int(fold.max()) + 1:
        raise ValueError(f"folds must number the {n} pairs 0..K-1 (K >= 2, every fold used)")
    return fold.astype(np.int64)


def kfold_accuracy(scores: np.ndarray, target: np.ndarray, n_folds: int = 10,
                   thresholds: Optional[np.ndarray] = None, seed: int = 0, folds: Optional[np.ndarray] = None):
    """Returns (mean accuracy, std accuracy, per-fold best thresholds [n_folds]).

    ``thresholds``: the grid to search (ascending). None = every midpoint between distinct
    training scores (exact best). insightface's grid on squared L2 distance of unit vectors
    ``0:0.01:4`` is ``thresholds = 1 - np.arange(0, 4, 0.01)[::-1] / 2`` on cosine scores.
    ``seed``: the fold assignment's permutation (:func:`stratified_folds`). ``folds`` [n] int:
    a protocol's own folds 0..K-1 (LFW View 2's ten sets) instead; then ``n_folds`` = K.
    """
    s, t = _validate(scores, target)
    if folds is not None:
        fold = check_folds(folds, len(s))
        n_folds = int(fold.max()) + 1
    elif len(s) < n_folds:
        raise ValueError(f"{len(s)} pairs cannot be split into {n_folds} folds")
    else:
        fold = stratified_folds(s, t, n_folds, seed)
    accs, best = [], []
    for k in range(n_folds):
        test_idx = np.flatnonzero(fold == k)
        train = fold != k
        grid = _candidate_thresholds(s[train]) if thresholds is None else np.asarray(thresholds)
        thr = _best_threshold(s[train], t[train], grid)
        pred = s[test_idx] > thr
        accs.append(float(np.mean(pred == t[test_idx])))
        best.append(float(thr))
    return float(np.mean(accs)), float(np.std(accs)), np.asarray(best)


@register("verif_acc_kfold", "verification")
def verif_acc_kfold(scores: np.ndarray, target: np.ndarray, n_folds: int = 10) -> float:
    return kfold_accuracy(scores, target, n_folds)[0]


def verification_report(scores: np.ndarray, target: np.ndarray, protocol: str = "face",
                        fars=(1e-1, 1e-2, 1e-3, 1e-4), p_targets=(0.01, 0.05),
                        folds: Optional[np.ndarray] = None) -> dict:
    """All metrics of one protocol: ``face`` (10-fold acc, TAR@FAR, EER; FAR 1e-5 and 1e-6 too when
    there are enough impostor pairs to measure them, as on IJB-B / IJB-C) or ``speaker``
    (EER, minDCF at each P_target with C_miss = C_fa = 1). ``folds``: the pairs file's own folds
    for the k-fold accuracy (``acc_10fold`` keeps its name; ``file_folds`` says how many there were)."""
    out = {"n_pairs": int(len(scores)), "n_target": int(np.sum(target)), "eer": eer(scores, target)}
    n_impostor = len(scores) - out["n_target"]
    fars = tuple(fars) + tuple(f for f in (1e-5, 1e-6) if f < min(fars) and n_impostor * f >= 1)
    if protocol == "face":
        mean, std, _ = kfold_accuracy(scores, target, folds=folds)
        out["acc_10fold"], out["acc_10fold_std"] = mean, std
        if folds is not None:
            out["file_folds"] = int(np.max(folds)) + 1
        for far in fars:
            out[f"TAR@FAR={far:g}"] = tar_at_far(scores, target, far)
    elif protocol == "speaker":
        for p in p_targets:
            out[f"minDCF(p={p:g})"] = min_dcf(scores, target, p)
    else:
        raise ValueError(f"unknown verification protocol {protocol!r}")
    return out
