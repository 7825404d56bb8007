"""WordNet importer on a hand-written miniature of the data.noun / data.verb format (ancestors,
label ids, split, vocabulary checked by hand), the missing-package error, the real package when
installed; the TF-IDF kNN baseline against a brute-force dense computation."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from xclass.importers import wordnet as W

# entity <- animal <- dog, cat ; animal + pet <- puppy (multiple inheritance); verb run <- sprint
NOUN = """  1 This software and database is being provided
00000010 03 n 01 entity 0 000 | that which exists
00000020 05 n 01 animal 0 001 @ 00000010 n 0000 | a living organism; "animals move"
00000030 05 n 02 dog 0 domestic_dog 0 001 @ 00000020 n 0000 | a domesticated animal that barks
00000040 05 n 01 cat 0 001 @ 00000020 n 0000 | a small animal that purrs
00000050 04 n 01 pet 0 001 @ 00000010 n 0000 | a domesticated animal kept for company
00000060 05 n 01 puppy 0 002 @ 00000030 n 0000 @i 00000050 n 0000 | a young dog
"""
VERB = """00000010 38 v 01 run 0 000 01 + 02 00 | move fast on foot
00000020 38 v 01 sprint 0 001 @ 00000010 v 0000 01 + 02 00 | run very fast; "she sprinted"
"""


@pytest.fixture()
def mini(tmp_path):
    (tmp_path / "data.noun").write_text(NOUN)
    (tmp_path / "data.verb").write_text(VERB)
    return tmp_path


def test_ancestors_by_hand(mini):
    syn = W.read_wordnet(str(mini))
    anc = W.ancestors(syn)
    n = lambda o: ("n", o)  # noqa: E731
    assert anc[n(60)] == {n(30), n(20), n(10), n(50)}
    assert anc[n(30)] == {n(20), n(10)} and anc[n(10)] == frozenset()
    assert anc[("v", 20)] == {("v", 10)}
    assert syn[n(30)].lemmas == ["dog", "domestic dog"]


def test_import_layout(mini, tmp_path):
    meta = W.import_wordnet(str(tmp_path / "out"), str(mini), test_fraction=0.0, progress=False)
    # label keys sorted: (n,10) (n,20) (n,30) (n,50) (v,10) -> ids 0..4
    assert meta["num_classes"] == 5 and meta["splits"]["test"]["rows"] == 0
    t = pq.read_table(tmp_path / "out" / "train.parquet").sort_by("id")  # stored shuffled
    assert t.column("labels").to_pylist() == [[0], [0, 1], [0, 1], [0], [0, 1, 2, 3], [4]]
    vocab = (tmp_path / "out" / "vocab.txt").read_text().split()
    words = [vocab[i - 1] for i in t.column("tokens").to_pylist()[5]]
    assert words == ["run", "very", "fast", "she", "sprinted"]
    lab = pq.read_table(tmp_path / "out" / "labels.parquet")
    assert lab.column("text").to_pylist()[2] == "dog domestic dog | a domesticated animal that barks"
    assert lab.column("train_count").to_pylist() == [5, 3, 1, 1, 1]


def test_missing_package_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base"):
        W.import_wordnet(str(tmp_path / "out"), str(tmp_path / "nowhere"), progress=False)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/wordnet/data.noun"), reason="wordnet-base not installed")
def test_real_wordnet_counts(tmp_path):
    meta = W.import_wordnet(str(tmp_path / "wn"), progress=False)
    rows = meta["splits"]["train"]["rows"] + meta["splits"]["test"]["rows"]
    assert 94_000 < rows < 97_000 and 19_000 < meta["num_classes"] < 21_000


def test_tfidf_knn_brute_force(tmp_path):
    from xclass.importers.xmc_dataset import write_xmc_dataset
    from xclass.eval.tfidf import knn_rank, read_split, fit_idf, tfidf

    rng = np.random.default_rng(0)
    V, L = 30, 9

    def rows(n):
        return [(sorted(set(rng.integers(0, L, 2).tolist())), rng.integers(1, V, rng.integers(1, 8)).tolist(), [])
                for _ in range(n)]
    tr, te = rows(40), rows(10)
    write_xmc_dataset(str(tmp_path / "d"), {"train": [(a, b, [1.0] * len(b)) for a, b, _ in tr],
                                           "test": [(a, b, [1.0] * len(b)) for a, b, _ in te]},
                      num_labels=L, vocab_size=V, progress=False)
    Xtr, Ltr, _ = read_split(str(tmp_path / "d" / "train.parquet"))
    Xte, _, _ = read_split(str(tmp_path / "d" / "test.parquet"))
    idf = fit_idf(Xtr)
    got = knn_rank(tfidf(Xte, idf), tfidf(Xtr, idf), Ltr, L, k=5, top=3, progress=False)

    def dense(docs, n_docs_idf):  # sublinear tf * smoothed idf, L2 rows
        C = np.zeros((len(docs), V))
        for i, (_, toks, _) in enumerate(docs):
            for t in toks:
                C[i, t] += 1
        df = (np.array([[t in d[1] for t in range(V)] for d in tr])).sum(0)
        idf_d = np.log((1 + len(tr)) / (1 + df)) + 1
        X = np.where(C > 0, 1 + np.log(np.maximum(C, 1)), 0) * idf_d
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    S = dense(te, len(tr)) @ dense(tr, len(tr)).T
    for i in range(len(te)):
        nn = np.argsort(-S[i], kind="stable")[:5]
        votes = np.zeros(L)
        for j in nn:
            votes[tr[j][0]] += S[i, j]
        best = np.argsort(-votes, kind="stable")[:3]
        assert np.allclose(votes[got[i][got[i] >= 0]], votes[best][:int((got[i] >= 0).sum())], atol=1e-5)
