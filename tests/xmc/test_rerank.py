"""xclass.eval.rerank: features against brute-force loops, targets, the ordering, and the
re-ranked ``ranker`` CLI end to end on a small dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from xclass.eval import rerank as RR
from xclass.eval import ranker as R


def _Y(sets, L):
    rows = [i for i, s in enumerate(sets) for _ in s]
    cols = [c for s in sets for c in s]
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(sets), L))


def test_conditional_cooccurrence_brute_force():
    sets = [[0, 1], [0, 1, 2], [0], [2, 3], [1]]
    P = RR.conditional_cooccurrence(_Y(sets, 5)).toarray()
    for m in range(5):
        for l in range(5):
            with_m = [s for s in sets if m in s]
            want = sum(l in s for s in with_m) / len(with_m) if with_m else 0.0
            assert P[m, l] == pytest.approx(want)


def test_pair_features_brute_force():
    rng = np.random.default_rng(0)
    L, n, K = 6, 4, 4
    sets = [sorted(rng.choice(L, rng.integers(1, 4), replace=False)) for _ in range(30)]
    cond = RR.conditional_cooccurrence(_Y(sets, L))
    Pd = cond.toarray()
    short = np.array([[0, 3, 5, 1], [2, 4, -1, -1], [1, -1, -1, -1], [5, 0, 2, 3]])
    p = rng.uniform(0.05, 1, (n, K)).astype(np.float32)
    vote = np.sort(rng.uniform(0.05, 1, (n, K)), 1)[:, ::-1].astype(np.float32)
    counts = np.arange(1, L + 1, dtype=np.float64)
    F = RR.pair_features(short, p, vote, counts, cond)
    assert F.shape == (n, K, len(RR.FEATURES))
    name = {f: i for i, f in enumerate(RR.FEATURES)}
    for i in range(n):
        c = [(j, x) for j, x in enumerate(short[i]) if x >= 0]
        for j, lab in c:
            others = [(jj, m) for jj, m in c if jj != j]
            pm = max(p[i, jj] for jj, _ in c)
            want = {"p": p[i, j], "vote": vote[i, j], "log_count": np.log1p(counts[lab]), "vote_rank": j / K,
                    "p_rel": p[i, j] / pm, "p_max": pm, "vote_max": max(vote[i, jj] for jj, _ in c),
                    "p_rank": sorted(range(len(c)), key=lambda q: -p[i, c[q][0]]).index(j) / K,
                    "cooc_max": max([p[i, jj] * Pd[m, lab] for jj, m in others], default=0.0),
                    "cooc_mean": sum(p[i, jj] * Pd[m, lab] for jj, m in others) / sum(p[i, jj] for jj, _ in c)
                    if others else 0.0,
                    "implied_mean": sum(Pd[lab, m] * p[i, jj] for jj, m in others)
                    / max(sum(Pd[lab, m] for _, m in others), 1e-9) if others else 0.0}
            for key, v in want.items():
                assert F[i, j, name[key]] == pytest.approx(v, rel=1e-5, abs=1e-6), (i, j, key)
        assert np.all(F[i, [j for j, x in enumerate(short[i]) if x < 0]] == 0)


class _Fixed:
    """A stand-in classifier whose probability is the first feature."""

    def predict_proba(self, X):
        return np.stack([1 - X[:, 0], X[:, 0]], 1)


def test_rerank_orders_by_probability_and_targets():
    short = np.array([[4, 2, 7], [1, -1, -1]])
    F = np.zeros((2, 3, 2), np.float32)
    F[0, :, 0] = [0.2, 0.9, 0.5]
    F[1, 0, 0] = 0.3
    lab, val = RR.rerank(_Fixed(), F, short, top=3)
    assert lab.tolist() == [[2, 7, 4], [1, -1, -1]]
    np.testing.assert_allclose(val[0], [0.9, 0.5, 0.2], rtol=1e-6)
    assert np.isneginf(val[1, 1:]).all()
    Y = _Y([[7, 4], [0]], 8)
    assert RR.targets(short, Y).tolist() == [[1, 0, 1], [0, 0, 0]]


def test_holdout_and_take_rows():
    from xclass.eval.metrics import LabelSets

    ids = np.arange(1000)
    m = R.holdout_mask(ids, 10)
    assert 50 < m.sum() < 150 and np.array_equal(m, R.holdout_mask(ids, 10))
    # rows left by tools/xmc_fusion_grid.py's split (id hash mod 10 != 0) still give a holdout
    ids = np.arange(20000, dtype=np.uint64)
    rest = ids[(ids * np.uint64(2654435761) % np.uint64(2 ** 32)) % np.uint64(10) != 0]
    assert 0.08 < R.holdout_mask(rest, 10).mean() < 0.12
    lab = LabelSets(np.array([0, 2, 3, 3, 5]), np.array([1, 2, 0, 4, 5]))
    t = R.take_rows(lab, np.array([3, 0, 2]))
    assert t.indptr.tolist() == [0, 2, 4, 4] and t.indices.tolist() == [4, 5, 1, 2]


def test_ranker_cli_with_rerank(tmp_path, capsys):
    from xclass.cli.xmc import main
    from tests.xmc.test_ranker import _dataset

    d = _dataset(tmp_path)
    assert main(["ranker", "--data", str(d), "--out", str(tmp_path / "rk"), "--k", "5", "--K", "4", "--prune", "0",
                 "--holdout", "3"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["P@1"] > 60 and row["train_s"] > 0
