"""Verification and identification metrics: hand cases, brute force, scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from xclass.eval.identification import (cmc_at_k, identification_report, knn_majority_accuracy,
                                        knn_top1_accuracy, majority_vote)
from xclass.eval.verification import (_best_threshold, det_curve, eer, kfold_accuracy, min_dcf, roc,
                                      stratified_folds, tar_at_far, verification_report)

S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
T = np.array([1, 1, 0, 1, 0, 0], dtype=bool)


def test_hand_computed():
    fpr, tpr, _ = roc(S, T)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert eer(S, T) == pytest.approx(1 / 3)
    # C = 0.5 fnr + 0.5 fpr, minimum 1/6 at (fpr 0, fnr 1/3), normalised by 0.5
    assert min_dcf(S, T, p_target=0.5) == pytest.approx(1 / 3)
    assert tar_at_far(S, T, far=0.0, rule="le") == pytest.approx(2 / 3)
    f, fn, _ = det_curve(S, T)
    np.testing.assert_allclose(fn, 1 - tpr)


def _data(seed, n=3000, tie=False):
    rng = np.random.default_rng(seed)
    t = rng.random(n) < 0.3
    s = rng.normal(size=n) + 1.5 * t
    if tie:
        s = np.round(s, 1)      # many ties
    return s, t


@pytest.mark.parametrize("seed,tie", [(0, False), (1, True), (2, False)])
def test_eer_and_tar_against_sklearn(seed, tie):
    s, t = _data(seed, tie=tie)
    fpr, tpr, _ = roc_curve(t, s, drop_intermediate=False)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert eer(s, t) == pytest.approx(max(fpr[i], fnr[i]))
    for far in (1e-1, 1e-2, 1e-3):
        near = fpr[np.argmin(np.abs(fpr - far))]
        assert tar_at_far(s, t, far) == pytest.approx(tpr[fpr == near].max())
        assert tar_at_far(s, t, far, rule="le") == pytest.approx(tpr[fpr <= far].max())


@pytest.mark.parametrize("p", [0.01, 0.05])
def test_min_dcf_brute_force(p):
    s, t = _data(3, n=400)
    best = np.inf
    for thr in np.r_[np.unique(s), np.inf]:
        acc = s >= thr
        pmiss = np.mean(~acc[t])
        pfa = np.mean(acc[~t])
        best = min(best, pmiss * p + pfa * (1 - p))
    assert min_dcf(s, t, p) == pytest.approx(best / min(p, 1 - p))


def test_kfold_accuracy_brute_force():
    s, t = _data(4, n=200)
    fold = stratified_folds(s, t, 10)
    accs = []
    for k in range(10):
        f = np.flatnonzero(fold == k)
        tr = np.setdiff1d(np.arange(len(s)), f)
        u = np.unique(s[tr])
        cands = np.r_[u[0] - 1, (u[:-1] + u[1:]) / 2, u[-1]]
        tr_acc = np.array([np.mean((s[tr] > c) == t[tr]) for c in cands])
        thr = cands[np.flatnonzero(tr_acc == tr_acc.max()).max()]   # ties: highest threshold
        accs.append(np.mean((s[f] > thr) == t[f]))
    mean, std, thr = kfold_accuracy(s, t, 10)
    assert mean == pytest.approx(np.mean(accs)) and std == pytest.approx(np.std(accs))
    assert len(thr) == 10


def test_stratified_folds_balanced():
    s, t = _data(7, n=4950)
    fold = stratified_folds(s, t, 10)
    for k in range(10):
        assert abs(int(np.sum(t & (fold == k))) - t.sum() / 10) < 1
        assert abs(int(np.sum(~t & (fold == k))) - (~t).sum() / 10) < 1
    assert abs(np.bincount(fold).max() - np.bincount(fold).min()) <= 1


def test_kfold_accuracy_independent_of_file_order():
    """The imported-data case: 450 genuine pairs first, then 4,500 impostors. Contiguous folds
    gave ~1 - 450/4950 with a std of ~20 points; sorted and shuffled files must agree."""
    rng = np.random.default_rng(0)
    t = np.r_[np.ones(450, bool), np.zeros(4500, bool)]
    s = np.r_[rng.normal(0.6, 0.15, 450), rng.normal(0.1, 0.15, 4500)].round(3)   # with ties
    sorted_acc = kfold_accuracy(s, t)
    perm = rng.permutation(len(s))
    shuffled_acc = kfold_accuracy(s[perm], t[perm])
    assert sorted_acc[0] == pytest.approx(shuffled_acc[0], abs=1e-12)
    assert sorted_acc[1] == pytest.approx(shuffled_acc[1], abs=1e-12)
    order = np.argsort(-s, kind="stable")
    assert kfold_accuracy(s[order], t[order])[0] == pytest.approx(sorted_acc[0], abs=1e-12)
    assert sorted_acc[1] < 0.03                    # no all-impostor fold any more


def test_kfold_accuracy_hand_computed():
    """2 folds of one genuine + one impostor. Genuine 0.9, 0.3; impostor 0.4, 0.1.
    A: {0.9+, 0.4-} | {0.3+, 0.1-}: thresholds 0.65 and 0.2, each fold 1/2 right -> 0.5.
    B: {0.9+, 0.1-} | {0.3+, 0.4-}: training on B's second fold ties at 1/2 between -0.7 and
    0.4; the highest (0.4) gets fold one fully right; the other fold gets 1/2 -> 0.75."""
    s = np.array([0.9, 0.3, 0.4, 0.1])
    t = np.array([True, True, False, False])
    seen = set()
    for seed in range(8):
        fold = stratified_folds(s, t, 2, seed)
        case = "A" if fold[0] == fold[2] else "B"
        seen.add(case)
        mean, std, _ = kfold_accuracy(s, t, 2, seed=seed)
        assert (mean, std) == ((0.5, 0.0) if case == "A" else (0.75, 0.25)), (seed, case)
    assert seen == {"A", "B"}


def test_threshold_ties_match_insightface_argmax():
    """insightface LFW: argmax over ascending L2 distances of unit vectors, same iff d < thr.
    On cosine scores (d^2 = 2 - 2 cos) its choice is the highest tied cosine threshold."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = rng.random(60) < 0.5
        cos = np.clip(rng.normal(0.2 + 0.4 * t, 0.3), -0.9, 0.9).round(1) + 0.0033   # ties, off-grid
        d2_grid = np.arange(0, 4, 0.01)
        acc = [np.mean(((2 - 2 * cos) < d) == t) for d in d2_grid]
        want = 1 - d2_grid[int(np.argmax(acc))] / 2
        got = _best_threshold(cos, t, np.sort(1 - d2_grid / 2))
        assert got == pytest.approx(want, abs=1e-9)     # the same grid point, not just equal accuracy


def test_verification_errors_and_reports():
    with pytest.raises(ValueError, match="both target and non-target"):
        eer(S, np.ones(6, bool))
    with pytest.raises(ValueError, match="non-finite score at row 2"):
        eer(np.array([0.1, 0.2, np.nan]), np.array([1, 0, 1], bool))
    s, t = _data(5, n=500)
    face = verification_report(s, t, "face")
    assert {"acc_10fold", "TAR@FAR=0.0001", "eer"} <= set(face)
    spk = verification_report(s, t, "speaker")
    assert {"minDCF(p=0.01)", "minDCF(p=0.05)", "eer"} <= set(spk)


def test_identification_hand_computed():
    nbr = np.array([[1, 2, 2, 3], [0, 1, 1, 0], [5, 6, 7, 8], [4, 4, 9, 9]])
    q = np.array([2, 1, 7, 9])
    assert knn_top1_accuracy(nbr, q) == pytest.approx(0.0)
    assert cmc_at_k(nbr, q, 2) == pytest.approx(2 / 4)
    assert cmc_at_k(nbr, q, 3) == pytest.approx(1.0)
    # votes@4: row0 -> 2, row1 -> 0 (tie 0/1, 0 ranked first), row2 -> 5, row3 -> 4 (tie, first)
    assert majority_vote(nbr, 4).tolist() == [2, 0, 5, 4]
    assert knn_majority_accuracy(nbr, q, 4) == pytest.approx(1 / 4)
    sims = np.array([[0.9, 0.1, 0.1, 0.1]] * 4)
    # similarity threshold keeps only the top-1 neighbour
    assert majority_vote(nbr, 4, sims, min_similarity=0.5).tolist() == [1, 0, 5, 4]
    rep = identification_report(nbr, q, ks=(1, 3), majority_k=4)
    assert rep["rank3"] == pytest.approx(1.0) and rep["knn_acc"] == 0.0
