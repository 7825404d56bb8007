"""The hardest pairs of a verification report: highest-scoring impostors and lowest-scoring genuine
pairs, with the input files from the dataset's file map (files.parquet)."""
from __future__ import annotations

import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.cli.main import main as xclass
from xclass.eval.hardest import hardest_pairs


def test_hardest_pairs_by_hand():
    a, b = np.arange(6), np.arange(10, 16)
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.3])
    target = np.array([True, False, False, True, True, False])
    rows = hardest_pairs(a, b, scores, target, 2, {2: "x/2.png", 12: "y/12.png"})
    assert [(r["kind"], r["rank"], r["a"]) for r in rows] == [
        ("impostor, high score", 1, 2), ("impostor, high score", 2, 5),   # 0.5, 0.3 (not 0.1)
        ("genuine, low score", 1, 4), ("genuine, low score", 2, 3)]       # 0.2, 0.8 (not 0.9)
    assert rows[0]["a_path"] == "x/2.png" and rows[0]["b_path"] == "y/12.png" and rows[1]["a_path"] == ""


def _dataset(tmp_path, n=30):
    """Embeddings of ids 0..n-1, a pairs file and the file map beside it."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(n), "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(emb.reshape(-1)), 8)}), tmp_path / "e.parquet")
    data = tmp_path / "data"
    data.mkdir()
    a, b = rng.integers(0, n, 80), rng.integers(0, n, 80)
    same = rng.random(80) < 0.5
    pq.write_table(pa.table({"a": a, "b": b, "same": same}), data / "pairs.parquet")
    pq.write_table(pa.table({"id": np.arange(n), "split": ["test"] * n, "label": np.zeros(n, np.int64),
                             "path": [f"p{i % 3}/{i}.jpg" for i in range(n)]}), data / "files.parquet")
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return a, b, same, (unit[a] * unit[b]).sum(1)


def _evaluate(tmp_path, *extra):
    return xclass(["evaluate", "--protocol", "face", "--embeddings", str(tmp_path / "e.parquet"), "--pairs",
                   str(tmp_path / "data" / "pairs.parquet"), "--out", str(tmp_path / "r"), "--no-plots", "--quiet",
                   *extra])


def test_report_lists_the_hardest_pairs_with_their_files(tmp_path):
    a, b, same, s = _dataset(tmp_path)
    assert _evaluate(tmp_path, "--hardest", "5") == 0
    rows = list(csv.DictReader(open(tmp_path / "r" / "hardest_pairs.csv")))
    imp = [r for r in rows if r["kind"].startswith("impostor")]
    gen = [r for r in rows if r["kind"].startswith("genuine")]
    assert len(imp) == len(gen) == 5
    np.testing.assert_allclose([float(r["score"]) for r in imp], np.sort(s[~same])[::-1][:5], atol=1e-5)
    np.testing.assert_allclose([float(r["score"]) for r in gen], np.sort(s[same])[:5], atol=1e-5)
    for r in rows:
        assert r["a_path"] == f"p{int(r['a']) % 3}/{r['a']}.jpg" and r["b_path"] == f"p{int(r['b']) % 3}/{r['b']}.jpg"
    summary = open(tmp_path / "r" / "summary.md").read()
    assert "## Hardest pairs" in summary and imp[0]["a_path"] in summary


def test_no_hardest_pairs_with_zero_and_a_bad_file_map_is_one_line(tmp_path, capsys):
    _dataset(tmp_path)
    assert _evaluate(tmp_path, "--hardest", "0") == 0
    assert not os.path.exists(tmp_path / "r" / "hardest_pairs.csv")
    pq.write_table(pa.table({"id": [0]}), tmp_path / "bad.parquet")
    assert _evaluate(tmp_path, "--file-map", str(tmp_path / "bad.parquet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.parquet: not a file map with columns id, path" in err[0]
    with pytest.raises(SystemExit):
        xclass(["evaluate", "--protocol", "face", "--hardest", "x"])


def test_markdown_cells_escape_table_breaking_paths():
    from xclass.eval.hardest import to_markdown

    md = to_markdown([{"kind": "genuine, low score", "rank": 1, "score": 0.5, "a": 3, "b": 4,
                       "a_path": "odd|name\nx.png", "b_path": ""}])
    row = md[-2]
    assert row == "| genuine, low score | 1 | 0.5000 | odd\\|name x.png | 4 |"
    assert row.replace("\\|", "").count("|") == 6   # five cells


def test_identification_lists_its_most_confident_mistakes_with_files(tmp_path):
    from tests.eval.conftest import clustered, write_embeddings
    from tests.eval.test_cli import _args, _export
    from xclass.cli.evaluate import add_evaluate_args, run_evaluate

    x, lab = clustered(300, 8, 15, seed=2, noise=1.2)                       # noisy: many mistakes
    gal, qry = np.arange(0, 300, 2), np.arange(1, 300, 2)
    gf = write_embeddings(tmp_path / "gallery.parquet", gal, x[gal], label=lab[gal])
    qf = write_embeddings(tmp_path / "query.parquet", qry, x[qry], label=lab[qry])
    pq.write_table(pa.table({"id": np.arange(300), "split": ["test"] * 300, "label": lab.astype(np.int64),
                             "path": [f"c{c}/{i}.wav" for i, c in enumerate(lab)]}), tmp_path / "files.parquet")
    out = _export(tmp_path, [gf])
    assert run_evaluate(_args(add_evaluate_args, ["--protocol", "ident", "--index", out, "--gallery", gf, "--queries",
                                                  qf, "--out", str(tmp_path / "rep"), "--quiet", "--hardest", "7",
                                                  "--file-map", str(tmp_path / "files.parquet")])) == 0
    rows = list(csv.DictReader(open(tmp_path / "rep" / "hardest_queries.csv")))
    S = x[qry] @ x[gal].T                                                   # brute force
    best = S.argmax(1)
    wrong = np.flatnonzero(lab[gal][best] != lab[qry])
    wrong = wrong[np.argsort(-S.max(1)[wrong], kind="stable")][:7]
    assert len(rows) == 7 and [int(r["query"]) for r in rows] == qry[wrong].tolist()
    assert [int(r["nearest"]) for r in rows] == gal[best[wrong]].tolist()
    np.testing.assert_allclose([float(r["score"]) for r in rows], S.max(1)[wrong], atol=1e-5)
    assert all(r["query_path"] == f"c{lab[int(r['query'])]}/{r['query']}.wav" for r in rows)
