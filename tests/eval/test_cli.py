"""End to end: Parquet files -> run_export -> run_evaluate -> report, against numpy references."""
import argparse
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.eval.conftest import clustered, write_embeddings
from xclass.cli.evaluate import add_evaluate_args, add_export_args, run_evaluate, run_export
from xclass.eval.identification import identification_report
from xclass.eval.metrics import LabelSets, Ranking, inverse_propensity, xmc_metrics
from xclass.eval.verification import verification_report


def _args(adder, argv):
    p = argparse.ArgumentParser()
    adder(p)
    return p.parse_args(argv)


def _export(tmp_path, files, *extra):
    out = str(tmp_path / "index")
    assert run_export(_args(add_export_args, ["--embeddings", *files, "--out", out, *extra])) == 0
    return out


def test_xmc_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    L, d, n = 400, 16, 90
    lab_emb = rng.normal(size=(L, d)).astype(np.float32)
    files = [write_embeddings(tmp_path / f"labels-{i:05d}.parquet", np.arange(L)[s], lab_emb[s])
             for i, s in enumerate(np.array_split(np.arange(L), 2))]
    truth = [rng.choice(L, size=rng.integers(0, 4), replace=False) for _ in range(n)]
    q = np.stack([lab_emb[t].sum(0) if len(t) else rng.normal(size=d) for t in truth])
    q = (q + 0.5 * rng.normal(size=q.shape)).astype(np.float32)
    qf = write_embeddings(tmp_path / "queries.parquet", np.arange(n), q, labels=truth)
    train = [rng.choice(L, size=3, replace=False) for _ in range(300)]
    tf = write_embeddings(tmp_path / "train.parquet", np.arange(300), np.zeros((300, 2)), labels=train)
    filt = np.array([[0, 5], [3, 17], [3, 18], [40, 2]])
    np.savetxt(tmp_path / "filter.txt", filt, fmt="%d")
    out = _export(tmp_path, files)
    rc = run_evaluate(_args(add_evaluate_args, [
        "--protocol", "xmc", "--index", out, "--queries", qf, "--ks", "1,3,5,10",
        "--train-labels", tf, "--filter", str(tmp_path / "filter.txt"), "--batch-rows", "7",
        "--out", str(tmp_path / "rep"), "--quiet"]))
    assert rc == 0
    got = json.load(open(tmp_path / "rep" / "metrics.json"))
    # reference: full cosine score matrix, filtered pairs set to -inf before ranking
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ln = lab_emb / np.linalg.norm(lab_emb, axis=1, keepdims=True)
    S = qn.astype(np.float64) @ ln.T
    S[filt[:, 0], filt[:, 1]] = -np.inf
    top = np.argsort(-S, axis=1)[:, :10]
    counts = np.bincount(np.concatenate(train), minlength=L)
    ref = xmc_metrics(Ranking.build(top, LabelSets.from_lists(truth),
                                    inverse_propensity(counts, 300, 0.55, 1.5)), (1, 3, 5, 10))
    for key, val in ref.items():
        assert got["metrics"][key] == pytest.approx(val, abs=1e-9), key
    assert got["header"]["propensity_A_B"] == [0.55, 1.5]
    assert got["header"]["filter_file"].endswith("filter.txt")
    assert os.path.exists(tmp_path / "rep" / "xmc_at_k.png")
    assert "P@1" in capsys.readouterr().out
    # rankings Parquet: query id, the filtered top-10 label ids and their cosine scores
    rk = pq.read_table(tmp_path / "rep" / "rankings.parquet")
    assert rk.column("id").to_pylist() == list(range(n))
    np.testing.assert_array_equal(np.array(rk.column("labels").to_pylist()), top)
    np.testing.assert_allclose(np.array(rk.column("scores").to_pylist()),
                               np.take_along_axis(S, top, 1), atol=1e-5)
    # PSP with label counts from a file and the full training set's N
    (tmp_path / "counts.txt").write_text("".join(f"{c}\n" for c in counts))
    rc = run_evaluate(_args(add_evaluate_args, [
        "--protocol", "xmc", "--index", out, "--queries", qf, "--ks", "1,5", "--label-counts",
        str(tmp_path / "counts.txt"), "--propensity-n", "5000", "--out", str(tmp_path / "rep2"), "--quiet"]))
    assert rc == 0
    got = json.load(open(tmp_path / "rep2" / "metrics.json"))
    S2 = qn.astype(np.float64) @ ln.T
    ref = xmc_metrics(Ranking.build(np.argsort(-S2, axis=1)[:, :5], LabelSets.from_lists(truth),
                                    inverse_propensity(counts, 5000, 0.55, 1.5)), (1, 5))
    assert got["metrics"]["PSP@5"] == pytest.approx(ref["PSP@5"], abs=1e-9)
    assert got["header"]["propensity_N"] == 5000
    # an existing --rankings file is refused before anything is written
    rc = run_evaluate(_args(add_evaluate_args, [
        "--protocol", "xmc", "--index", out, "--queries", qf, "--rankings",
        str(tmp_path / "rep" / "rankings.parquet"), "--quiet"]))
    assert rc == 2


@pytest.mark.parametrize("protocol", ["face", "speaker"])
def test_verification_end_to_end(tmp_path, protocol):
    x, lab = clustered(200, 8, 20, seed=1, noise=0.8)
    ids = np.arange(200) + 1000
    ef = write_embeddings(tmp_path / "emb.parquet", ids, x)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 200, 600), rng.integers(0, 200, 600)
    same = lab[a] == lab[b]
    names = ("a", "b", "same") if protocol == "face" else ("enroll", "test", "target")
    pq.write_table(pa.table({names[0]: ids[a], names[1]: ids[b], names[2]: same}),
                   tmp_path / "pairs.parquet")
    rc = run_evaluate(_args(add_evaluate_args, [
        "--protocol", protocol, "--embeddings", ef, "--pairs", str(tmp_path / "pairs.parquet"),
        "--out", str(tmp_path / "rep")]))
    assert rc == 0
    got = json.load(open(tmp_path / "rep" / "metrics.json"))["metrics"]
    ref = verification_report(np.einsum("ij,ij->i", x[a], x[b]).astype(np.float64), same, protocol)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-6), key
    for png in ("roc.png", "det.png", "score_hist.png"):
        assert os.path.getsize(tmp_path / "rep" / png) > 1000


def test_identification_end_to_end(tmp_path):
    x, lab = clustered(300, 8, 10, seed=3, noise=0.6)
    gf = write_embeddings(tmp_path / "gallery.parquet", np.arange(200) * 2, x[:200], label=lab[:200])
    qf = write_embeddings(tmp_path / "query.parquet", np.arange(100), x[200:], label=lab[200:])
    out = _export(tmp_path, [gf])
    rc = run_evaluate(_args(add_evaluate_args, [
        "--protocol", "ident", "--index", out, "--gallery", gf, "--queries", qf,
        "--ks", "1,5", "--out", str(tmp_path / "rep"), "--quiet"]))
    assert rc == 0
    got = json.load(open(tmp_path / "rep" / "metrics.json"))["metrics"]
    S = x[200:] @ x[:200].T
    nbr = lab[:200][np.argsort(-S, axis=1)[:, :5]]
    ref = identification_report(nbr, lab[200:], (1, 5), 5)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val), key
    # rankings: per query the labels of its 5 nearest gallery rows (brute force) and their scores
    rk = pq.read_table(tmp_path / "rep" / "rankings.parquet").to_pydict()
    assert rk["id"] == list(range(100)) and rk["labels"] == nbr.tolist()
    np.testing.assert_allclose(rk["scores"], -np.sort(-S, axis=1)[:, :5], rtol=1e-5, atol=1e-5)


def test_identification_gallery_file_not_the_indexed_one(tmp_path, capsys):
    x, lab = clustered(300, 8, 10, seed=3, noise=0.6)
    gf = write_embeddings(tmp_path / "gallery.parquet", np.arange(200) * 2, x[:200], label=lab[:200])
    qf = write_embeddings(tmp_path / "query.parquet", np.arange(100) * 2 + 1, x[200:], label=lab[200:])
    out = _export(tmp_path, [gf])
    rc = run_evaluate(_args(add_evaluate_args, [
        "--protocol", "ident", "--index", out, "--gallery", qf, "--queries", qf, "--out", str(tmp_path / "rep"),
        "--quiet"]))
    assert rc == 2 and not os.path.exists(tmp_path / "rep")      # was: every neighbour unlabelled, 0 % silently
    # (the rankings file begun under rep/ is removed with its folder)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query.parquet: has no row for id" in err[0] and "query row 0" in err[0]


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    good = write_embeddings(tmp_path / "g.parquet", [0, 1, 2], np.eye(3, 4))
    out = _export(tmp_path, [good])
    nan = np.eye(3, 4)
    nan[2, 1] = np.nan
    cases = [
        (add_export_args, ["--embeddings", write_embeddings(tmp_path / "n.parquet", [0, 1, 2], nan),
                           "--out", str(tmp_path / "o1")], "n.parquet: column 'embedding' row 2"),
        (add_export_args, ["--embeddings", str(tmp_path / "missing.parquet"), "--out",
                           str(tmp_path / "o2")], "no such file"),
        (add_evaluate_args, ["--protocol", "xmc", "--index", out, "--queries", good],
         "g.parquet: missing label column"),
        (add_evaluate_args, ["--protocol", "xmc", "--index", str(tmp_path), "--queries", good],
         "no manifest.json"),
        (add_evaluate_args, ["--protocol", "xmc", "--index", out, "--queries", write_embeddings(
            tmp_path / "q5.parquet", [0], np.ones((1, 5)), labels=[[1]])], "query dimension 5"),
        (add_evaluate_args, ["--protocol", "face", "--embeddings", good], "needs --pairs"),
    ]
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    cases.append((add_export_args, ["--embeddings", str(tmp_path / "empty.parquet"), "--out",
                                    str(tmp_path / "o3")], "empty.parquet: file has no rows"))
    pq.write_table(pa.table({"id": [0, 1], "vec": [[1.0], [2.0]]}), tmp_path / "nocol.parquet")
    cases.append((add_export_args, ["--embeddings", str(tmp_path / "nocol.parquet"), "--out",
                                    str(tmp_path / "o4")], "missing column(s) ['embedding']"))
    pq.write_table(pa.table({"a": [0], "b": [9], "same": [True]}), tmp_path / "p.parquet")
    cases.append((add_evaluate_args, ["--protocol", "face", "--embeddings", good, "--pairs",
                                      str(tmp_path / "p.parquet")], "refers to id 9"))
    for adder, argv, msg in cases:
        runner = run_export if adder is add_export_args else run_evaluate
        assert runner(_args(adder, argv)) == 2, argv
        assert msg in capsys.readouterr().err, msg


@pytest.mark.parametrize("kind", ["flat", "ivfflat"])
def test_query_labels_outside_the_index_are_refused(tmp_path, capsys, kind):
    rng = np.random.default_rng(8)
    ids = np.arange(0, 600, 2)                    # even ids only
    x = rng.normal(size=(300, 8)).astype(np.float32)
    out = _export(tmp_path, [write_embeddings(tmp_path / "lab.parquet", ids, x)],
                  "--index-type", kind, "--nlist", "4", "--train-size", "300")
    labels = [[0], [4, 6], [], [2]] * 3
    bad_id = 7 if kind == "flat" else 600         # IVF: checked against the manifest id range
    labels[9] = [2, bad_id]
    qf = write_embeddings(tmp_path / "q.parquet", np.arange(12), x[:12], labels=labels)
    argv = ["--protocol", "xmc", "--index", out, "--queries", qf, "--quiet", "--batch-rows", "5"]
    assert run_evaluate(_args(add_evaluate_args, argv)) == 2
    err = capsys.readouterr().err
    assert f"q.parquet: row 9 has label id {bad_id}, which the index" in err and out in err
    assert run_evaluate(_args(add_evaluate_args, argv + ["--allow-unindexed-labels"])) == 0
