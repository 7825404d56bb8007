"""xclass.eval.fusion against brute force and hand-computed cases."""
from __future__ import annotations

import os

import numpy as np
import pytest

from xclass.eval.metrics import LabelSets
from xclass.eval import fusion


def _labels(sets):
    off = np.cumsum([0] + [len(s) for s in sets])
    return LabelSets(off.astype(np.int64), np.concatenate([np.asarray(s, np.int64) for s in sets]))


def test_knn_votes_brute_force():
    rng = np.random.default_rng(0)
    n, N, L, k = 7, 30, 12, 5
    train = [rng.choice(L, rng.integers(1, 4), replace=False) for _ in range(N)]
    Y = fusion.label_matrix(_labels(train), L)
    sim = rng.uniform(-0.2, 1, (n, k)).astype(np.float32)
    nbr = rng.integers(0, N, (n, k))
    nbr[0, -1] = -1  # a missing neighbour votes nothing
    got = fusion.knn_votes(sim, nbr, Y).toarray()
    want = np.zeros((n, L))
    for i in range(n):
        w = [max(s, 0.0) if j >= 0 else 0.0 for s, j in zip(sim[i], nbr[i])]
        for s, j in zip(w, nbr[i]):
            if j >= 0:
                want[i, train[j]] += s / sum(w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.max() <= 1 + 1e-6


def test_embedding_knn_matches_numpy_cosine():
    rng = np.random.default_rng(1)
    q, t = rng.normal(size=(6, 8)), rng.normal(size=(40, 8))
    sim, ids = fusion.embedding_knn(q, t, k=4)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(ids, np.argsort(-cos, axis=1)[:, :4])
    np.testing.assert_allclose(sim, np.sort(cos, axis=1)[:, ::-1][:, :4], rtol=1e-5, atol=1e-6)


def test_dual_scores_hand_case():
    ids = np.array([[3, 1, -1]])
    s = np.array([[0.5, 0.4, -np.inf]], np.float32)
    got = fusion.dual_scores(ids, s, 10.0, 5).toarray()
    np.testing.assert_allclose(got, [[0, np.exp(-1.0), 0, 1.0, 0]], rtol=1e-6)


def test_fuse_weighted_mean_and_ties():
    import scipy.sparse as sp

    a = sp.csr_matrix(np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32))
    b = sp.csr_matrix(np.array([[0.0, 1.0, 0.0, 0.4], [0.2, 0.0, 0.2, 0.0]], np.float32))
    # weights 1:3 -> row 0: [0.25, 0.875, 0, 0.3]; row 1: labels 0 and 2 tie (id order), no others
    ids, val = fusion.fuse([(a, 1.0), (b, 3.0)], top=3)
    np.testing.assert_array_equal(ids, [[1, 3, 0], [0, 2, -1]])
    np.testing.assert_allclose(val, [[0.875, 0.3, 0.25], [0.15, 0.15, -np.inf]], rtol=1e-6)
    ids, _ = fusion.fuse([(a, 1.0), (b, 3.0)], top=3, prior=np.array([1, 0, 5, 0]))
    np.testing.assert_array_equal(ids[1], [2, 0, -1])  # the tie goes to the higher prior


@pytest.mark.parametrize("text,msg", [("dual=1,foo=2", "'foo'"), ("dual=-1", "must be a finite number >= 0"),
                                      ("dual=inf", "must be a finite number >= 0"), ("dual=abc", "'abc': not a number"),
                                      ("dual=0", "at least one")])
def test_parse_weights_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        fusion.parse_weights(text)


def test_missing_weighted_source_is_an_error():
    with pytest.raises(ValueError, match="emb_knn"):
        fusion.used({"emb_knn": 1.0}, {"emb_knn": None})


def test_fuse_cli_dual_only_reproduces_the_evaluation_ranking(tmp_path, capsys):
    """`fuse --weights dual=1` ranks by the run's cosines: the same top-10 as `evaluate`'s
    rankings.parquet; all three sources give a full ranking file."""
    import json

    import pyarrow.parquet as pq

    import xclass.heads.xmc  # noqa: F401  (registers the heads)
    from xclass.config import load_config
    from xclass.data.generate import make_data
    from xclass.train.loop import train
    from xclass.cli.xmc import main

    d, run = str(tmp_path / "data"), str(tmp_path / "run")
    make_data("xmc", d, 30, rows_per_class=4, seed=0, progress=False)
    train(load_config(None, [
        "data.task=xmc", f"data.path={d}", "data.batch_size=16", "model.encoder=embbag",
        "model.embedding_dim=8", "model.params={token_dim: 8, hidden: []}", "head.name=dual_decoupled",
        "head.params={scale: 10.0}", "optim.name=adamw", "optim.lr=0.05", "optim.weight_decay=0.0",
        "optim.sparse_embeddings=true", "train.max_steps=6", f"train.out_dir={run}", "train.progress=false"]))
    work = str(tmp_path / "ev")
    assert main(["evaluate", "--run", run, "--work", work, "--ks", "1,3,5,10"]) == 0
    ev = pq.read_table(os.path.join(work, "run", "rankings.parquet"))
    assert main(["fuse", "--run", run, "--work", os.path.join(work, "run"), "--weights", "dual=1"]) == 0
    fu = pq.read_table(os.path.join(work, "run", "fused_rankings.parquet"))
    assert fu.column("id").to_pylist() == ev.column("id").to_pylist()
    a, b = np.array(fu.column("labels").to_pylist()), np.array(ev.column("labels").to_pylist())
    assert (a[:, :5] == b[:, :5]).mean() > 0.99  # equal up to ties of equal cosines
    assert main(["fuse", "--run", run, "--work", os.path.join(work, "run")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["method"] == "fusion" and 0 < row["P@1"] <= 100 and row["unit"] == "percent"
