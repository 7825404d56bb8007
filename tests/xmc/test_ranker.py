"""xclass.eval.ranker (kNN shortlist + per-label linear rankers) against brute force and
scikit-learn, the ``ranker`` CLI and its rankings as a fusion source."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from xclass.eval import fusion, ranker as R
from xclass.eval.metrics import LabelSets


def _labels(sets):
    off = np.cumsum([0] + [len(s) for s in sets])
    return LabelSets(off.astype(np.int64), np.concatenate([np.asarray(s, np.int64) for s in sets]))


def _problem(seed=0, N=60, n=9, V=25, L=8):
    """Rows whose label j goes with a token block, so the rankers have something to learn."""
    rng = np.random.default_rng(seed)
    sets = [sorted(rng.choice(L, rng.integers(1, 3), replace=False)) for _ in range(N + n)]
    X = np.zeros((N + n, V))
    for i, s in enumerate(sets):
        for j in s:
            X[i, rng.choice(3, 2) + 3 * j] += rng.uniform(0.5, 1.5, 2)
        X[i, rng.choice(V, 2)] += rng.uniform(0.1, 0.6, 2)  # continuous: no ties among neighbours
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return sp.csr_matrix(X[:N]), _labels(sets[:N]), sp.csr_matrix(X[N:]), sets[N:], L


def _brute_shortlist(Q, D, sets, L, k, K, self_out):
    S = Q.toarray() @ D.toarray().T
    if self_out:
        np.fill_diagonal(S, 0.0)
    out = np.full((S.shape[0], K), -1)
    for i, row in enumerate(S):
        votes = np.zeros(L)
        for j in np.argsort(-row, kind="stable")[:k]:
            votes[sets[j]] += max(row[j], 0.0)
        best = [b for b in np.argsort(-votes, kind="stable")[:K] if votes[b] > 0]
        out[i, :len(best)] = best
    return out


@pytest.mark.parametrize("self_out", [False, True])
def test_shortlist_brute_force(self_out):
    D, lab, Q, _, L = _problem()
    Q = D if self_out else Q
    sets = [lab.indices[lab.indptr[i]:lab.indptr[i + 1]] for i in range(lab.n_rows)]
    got, votes = R.shortlist(Q, D, lab, L, k=5, K=4, exclude_self=self_out, chunk=7)
    want = _brute_shortlist(Q, D, sets, L, 5, 4, self_out)
    for g, w in zip(got, want):  # the same label set (ties may order differently)
        assert set(g[g >= 0]) == set(w[w >= 0])
    assert np.all(votes[got < 0] == 0) and np.all((votes[got >= 0] > 0) & (votes[got >= 0] <= 1 + 1e-6))
    assert np.all(np.diff(votes, axis=1) <= 1e-7)  # best first


def test_fit_rankers_match_sklearn_per_label():
    D, lab, Q, _, L = _problem(1)
    short, _ = R.shortlist(D, D, lab, L, k=5, K=3, exclude_self=True)
    model = R.fit_rankers(D, lab, short, L, C=2.0, min_weight=0.0)
    Xd = D.toarray()
    for j in range(L):
        pos = {i for i in range(lab.n_rows) if j in lab.indices[lab.indptr[i]:lab.indptr[i + 1]]}
        rows = sorted(pos | {i for i in range(lab.n_rows) if j in short[i]})
        y = np.array([i in pos for i in rows], int)
        cols = np.flatnonzero(np.abs(Xd[rows]).sum(0) > 0)
        ref = LogisticRegression(C=2.0, solver="liblinear", random_state=0, max_iter=200).fit(Xd[rows][:, cols], y)
        w = np.zeros(D.shape[1])
        w[cols] = ref.coef_.ravel()
        np.testing.assert_allclose(model.weights[j].toarray().ravel(), w, rtol=1e-4, atol=1e-5)
        assert model.bias[j] == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-5)


def test_predict_scores_only_the_shortlist():
    D, lab, Q, test_sets, L = _problem(2)
    short, _ = R.shortlist(D, D, lab, L, k=5, K=4, exclude_self=True)
    model = R.fit_rankers(D, lab, short, L)
    sq, _ = R.shortlist(Q, D, lab, L, k=5, K=4)
    sq[0, 1:] = -1  # a short shortlist
    got_l, got_s = R.predict(model, Q, sq, top=4, chunk=4)
    Z = Q.toarray() @ model.weights.toarray().T + model.bias
    for i in range(Q.shape[0]):
        cand = [c for c in sq[i] if c >= 0]
        p = {c: 1 / (1 + np.exp(-Z[i, c])) for c in cand}
        want = sorted(cand, key=lambda c: -p[c])
        assert list(got_l[i][:len(want)]) == want and all(got_l[i][len(want):] == -1)
        np.testing.assert_allclose(got_s[i][:len(want)], [p[c] for c in want], rtol=1e-5)
    # learned: better than the shortlist order on this separable toy problem
    hits = sum(got_l[i][0] in s for i, s in enumerate(test_sets))
    assert hits >= 0.7 * len(test_sets)


def _dataset(tmp_path):
    from xclass.importers.xmc_dataset import write_xmc_dataset

    D, lab, Q, test_sets, L = _problem(3, N=120, n=30)

    def rows(X, sets):
        for i, s in enumerate(sets):
            r = X[i]
            yield list(s), r.indices.tolist(), r.data.astype(np.float32).tolist()
    train_sets = [lab.indices[lab.indptr[i]:lab.indptr[i + 1]] for i in range(lab.n_rows)]
    d = tmp_path / "data"
    write_xmc_dataset(str(d), {"train": rows(D, train_sets), "test": rows(Q, test_sets)}, num_labels=L,
                      vocab_size=D.shape[1], progress=False)
    return d


def test_ranker_cli_and_fusion_source(tmp_path, capsys):
    from xclass.cli.xmc import main

    d = _dataset(tmp_path)
    out = tmp_path / "rk"
    assert main(["ranker", "--data", str(d), "--out", str(out), "--k", "5", "--K", "4", "--prune", "0",
                 "--no-rerank"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["method"] == "ranker" and row["unit"] == "percent" and row["P@1"] > 60
    t = pq.read_table(out / "rankings.parquet")
    ids = pq.read_table(d / "test.parquet").column("id").to_numpy()
    assert t.column("id").to_numpy().tolist() == ids.tolist()
    # fusion with the ranker alone reproduces its ranking (scores are in [0, 1])
    assert main(["fuse", "--data", str(d), "--work", str(tmp_path / "f"), "--weights", "ranker=1,tfidf_knn=0",
                 "--rankings", f"ranker={out / 'rankings.parquet'}", "--ks", "1,3"]) == 0
    fused = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fused["P@1"] == row["P@1"] and fused["P@3"] == row["P@3"]
    f = pq.read_table(tmp_path / "f" / "fused_rankings.parquet").column("labels").to_pylist()
    rk = t.column("labels").to_pylist()
    assert [x[:1] for x in f] == [x[:1] for x in rk]
    # an existing output is refused before any work; bad values exit 2
    assert main(["ranker", "--data", str(d), "--out", str(out)]) == 2
    assert main(["ranker", "--data", str(d), "--out", str(tmp_path / "x"), "--K", "0"]) == 2
    assert not (tmp_path / "x").exists()
    assert main(["fuse", "--work", str(tmp_path / "g"), "--weights", "tfidf_knn=1"]) == 2  # no --run / --data


def test_rankings_scores_aligns_by_id(tmp_path):
    from xclass.eval.rankings import RankingWriter

    w = RankingWriter(str(tmp_path / "r.parquet"), 2)
    w.write(np.array([11, 10]), np.array([[3, 1], [0, -1]]), np.array([[0.9, 0.2], [0.5, 0.0]]))
    w.close()
    M = fusion.rankings_scores(str(tmp_path / "r.parquet"), np.array([10, 11, 12]), 4).toarray()
    np.testing.assert_allclose(M, [[0.5, 0, 0, 0], [0, 0.2, 0, 0.9], [0, 0, 0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="not one of"):
        fusion.parse_weights("ranker=1")
    assert fusion.parse_weights("ranker=1", ["ranker"]) == {"ranker": 1.0}


def test_tfidf_neighbours_are_the_brute_force_top_k(tmp_path):
    """fusion.tfidf_neighbours (the shared tfidf.neighbours loop, in chunks smaller than the test
    split): each test row's k most cosine-similar training rows, as a dense brute force finds them."""
    from xclass.eval.fusion import tfidf_neighbours
    from xclass.eval.tfidf import features, read_split

    d = _dataset(tmp_path)
    sims, ids = tfidf_neighbours(str(d), k=4, chunk=7)
    D, Q, _ = features(read_split(str(d / "train.parquet"))[0], read_split(str(d / "test.parquet"))[0])
    S = (Q @ D.T).toarray()
    assert ids.shape == (Q.shape[0], 4)
    np.testing.assert_allclose(np.sort(sims, 1), np.sort(S, 1)[:, -4:], rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(S, ids, 1), sims, rtol=1e-5)
