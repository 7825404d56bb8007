"""XMC metrics: hand-computed values and a brute-force per-row reference (pyxclib conventions)."""
import math

import numpy as np
import pytest

from xclass.eval.metrics import (LabelSets, Ranking, inverse_propensity, ndcg_at_k,
                                 precision_at_k, psndcg_at_k, psp_at_k, recall_at_k,
                                 remove_pairs, hits_at_k, xmc_metrics)

TRUTH = [[1, 3], [0], []]
TOPK = np.array([[3, 2, 1], [2, 0, 4], [0, 1, 2]])
W = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


def _r(w=None):
    return Ranking.build(TOPK, LabelSets.from_lists(TRUTH), w)


def test_hand_computed_plain():
    r = _r()
    assert precision_at_k(r, 1) == pytest.approx(1 / 3)
    assert precision_at_k(r, 3) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    row0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    row1 = (1 / math.log2(3)) / 1.0
    assert ndcg_at_k(r, 3) == pytest.approx((row0 + row1 + 0) / 3)
    assert recall_at_k(r, 1) == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert recall_at_k(r, 3) == pytest.approx(2 / 3)
    assert hits_at_k(r, 3) == pytest.approx(2 / 3)


def test_hand_computed_propensity():
    r = _r(W)
    # k=1: predicted gains 4 (row 0 label 3); ideal gains 4 (row 0) + 1 (row 1)
    assert psp_at_k(r, 1) == pytest.approx(4 / 5)
    assert psp_at_k(r, 3) == pytest.approx((4 + 2 + 1) / (4 + 2 + 1))
    idcg0, idcg1 = 1 + 1 / math.log2(3), 1.0
    num = (4 + 2 / math.log2(4)) / idcg0 + (1 / math.log2(3)) / idcg1
    den = (4 + 2 / math.log2(3)) / idcg0 + 1 / idcg1
    assert psndcg_at_k(r, 3) == pytest.approx(num / den)


def test_inverse_propensity_formula():
    counts, n, a, b = np.array([0, 1, 10, 1000]), 5000, 0.55, 1.5
    c = (math.log(n) - 1) * (b + 1) ** a
    expect = [1 + c * (x + b) ** -a for x in counts]
    np.testing.assert_allclose(inverse_propensity(counts, n, a, b), expect)


def _brute(topk, truth, w, k):
    """Per-row loops straight from the definitions (pyxclib conventions)."""
    p, nd, r_, h, psn, psd, pn, pd = [], [], [], [], 0.0, 0.0, 0.0, 0.0
    for row, y in zip(topk, truth):
        y = set(y)
        hit = [1.0 if lab in y else 0.0 for lab in row[:k]]
        disc = [1 / math.log2(i + 2) for i in range(k)]
        idcg = sum(disc[:min(k, len(y))]) if y else sum(disc)
        p.append(sum(hit) / k)
        nd.append(sum(a * b for a, b in zip(hit, disc)) / idcg)
        r_.append(sum(hit) / max(len(y), 1))
        h.append(float(any(hit)))
        g = [w[lab] * x for lab, x in zip(row[:k], hit)]
        ideal = sorted((w[lab] for lab in y), reverse=True)[:k]
        psn += sum(g)
        psd += sum(ideal)
        pn += sum(a * b for a, b in zip(g, disc)) / idcg
        pd += sum(a * b for a, b in zip(ideal, disc)) / idcg
    return {"P": np.mean(p), "nDCG": np.mean(nd), "R": np.mean(r_), "hits": np.mean(h),
            "PSP": psn / psd, "PSnDCG": pn / pd}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, L, depth = 60, 40, 10
    truth = [list(rng.choice(L, size=rng.integers(0, 8), replace=False)) for _ in range(n)]
    topk = np.stack([rng.permutation(L)[:depth] for _ in range(n)])
    w = inverse_propensity(rng.integers(0, 50, size=L), 1000)
    r = Ranking.build(topk, LabelSets.from_lists(truth), w)
    got = xmc_metrics(r, ks=(1, 3, 5, 10))
    for k in (1, 3, 5, 10):
        ref = _brute(topk, truth, w, k)
        for name, val in ref.items():
            assert got[f"{name}@{k}"] == pytest.approx(val, abs=1e-12), (name, k)


def test_padding_and_duplicates_in_truth():
    # -1 pads never hit; duplicated truth labels count once
    r = Ranking.build(np.array([[5, -1]]), LabelSets.from_lists([[5, 5, 7]]))
    assert r.n_true.tolist() == [2]
    assert precision_at_k(r, 2) == pytest.approx(0.5)
    assert recall_at_k(r, 2) == pytest.approx(0.5)


def test_drop_empty_rows():
    r = _r().drop_empty()
    assert precision_at_k(r, 1) == pytest.approx(1 / 2)


def test_concat_equals_whole():
    whole = _r(W)
    parts = [Ranking.build(TOPK[:2], LabelSets.from_lists(TRUTH[:2]), W),
             Ranking.build(TOPK[2:], LabelSets.from_lists(TRUTH[2:]), W)]
    a, b = xmc_metrics(whole), xmc_metrics(Ranking.concat(parts))
    assert a == pytest.approx(b)


def test_remove_pairs_filters_before_ranking():
    topk = np.array([[4, 1, 2, 3], [0, 1, 2, 3]])
    scores = np.array([[9.0, 8, 7, 6], [5.0, 4, 3, 2]])
    out, s = remove_pairs(topk, scores, np.array([[0, 4], [0, 2], [1, 3]]), k_out=3)
    assert out.tolist() == [[1, 3, -1], [0, 1, 2]]
    assert s[0, :2].tolist() == [8.0, 6.0] and s[0, 2] == -np.inf


def test_bad_k_and_shape():
    with pytest.raises(ValueError, match="outside"):
        precision_at_k(_r(), 4)
    with pytest.raises(ValueError, match="does not match"):
        Ranking.build(TOPK[:2], LabelSets.from_lists(TRUTH))
    with pytest.raises(ValueError, match="propensit"):
        psp_at_k(_r(), 1)
