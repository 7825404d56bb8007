"""AS-norm against a per-trial brute-force numpy implementation; CLI wiring and errors."""
import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.eval.conftest import clustered, write_embeddings
from xclass.cli.evaluate import add_evaluate_args, run_evaluate
from xclass.eval.evaluate import evaluate_verification
from xclass.eval.scorenorm import as_norm_trials, cohort_stats, unit_rows
from xclass.eval.verification import verification_report


def _asnorm_brute(E, T, C, n):
    """Written out trial by trial: float64, full sort of the cohort scores on each side."""
    out = []
    for e, t in zip(E, T):
        e, t = e / np.linalg.norm(e), t / np.linalg.norm(t)
        Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
        s = float(e @ t)
        top_e = np.sort(Cn @ e)[::-1][:n]
        top_t = np.sort(Cn @ t)[::-1][:n]
        out.append(0.5 * ((s - top_e.mean()) / top_e.std() + (s - top_t.mean()) / top_t.std()))
    return np.array(out)


@pytest.mark.parametrize("top_n", [2, 7, 60])
def test_as_norm_equals_brute_force(top_n):
    rng = np.random.default_rng(top_n)
    x = rng.normal(size=(40, 6)).astype(np.float64)
    C = rng.normal(size=(60, 6))
    re, rt = rng.integers(0, 40, 150), rng.integers(0, 40, 150)
    got = as_norm_trials(unit_rows(x), re, rt, unit_rows(C), top_n)
    ref = _asnorm_brute(x[re], x[rt], C, top_n)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # chunked statistics equal unchunked ones
    m1, s1 = cohort_stats(unit_rows(x), unit_rows(C), top_n, chunk=7)
    m2, s2 = cohort_stats(unit_rows(x), unit_rows(C), top_n, chunk=1000)
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_as_norm_is_not_plain_cosine():
    # a speaker-dependent offset (hub embeddings close to the whole cohort) is what AS-norm removes
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 4))
    C = rng.normal(size=(30, 4))
    got = as_norm_trials(unit_rows(x), np.arange(10), np.arange(10)[::-1], unit_rows(C), 5)
    raw = np.einsum("ij,ij->i", unit_rows(x), unit_rows(x)[::-1])
    assert not np.allclose(got, raw, atol=1e-2)


def _args(argv):
    p = argparse.ArgumentParser()
    add_evaluate_args(p)
    return p.parse_args(argv)


def test_speaker_cli_with_cohort(tmp_path, capsys):
    x, lab = clustered(120, 8, 12, seed=4, noise=0.9)
    ids = np.arange(120) + 500
    ef = write_embeddings(tmp_path / "emb.parquet", ids, x)
    coh, _ = clustered(80, 8, 30, seed=5, noise=0.9)
    cf = write_embeddings(tmp_path / "cohort.parquet", np.arange(80), coh)
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 120, 400), rng.integers(0, 120, 400)
    pq.write_table(pa.table({"enroll": ids[a], "test": ids[b], "target": lab[a] == lab[b]}),
                   tmp_path / "trials.parquet")
    rc = run_evaluate(_args(["--protocol", "speaker", "--embeddings", ef, "--pairs",
                             str(tmp_path / "trials.parquet"), "--cohort", cf, "--asnorm-top", "20",
                             "--out", str(tmp_path / "rep"), "--no-plots"]))
    assert rc == 0
    rep = json.load(open(tmp_path / "rep" / "metrics.json"))
    ref = verification_report(_asnorm_brute(x[a], x[b], coh, 20), lab[a] == lab[b], "speaker")
    for key, val in ref.items():
        assert rep["metrics"][key] == pytest.approx(val, abs=1e-6), key
    assert rep["header"]["score"] == "AS-norm(top 20) cosine"
    # too large a top-N and a cohort of the wrong dimension are refused with the file named
    assert run_evaluate(_args(["--protocol", "speaker", "--embeddings", ef, "--pairs",
                               str(tmp_path / "trials.parquet"), "--cohort", cf,
                               "--asnorm-top", "81"])) == 2
    assert "cohort.parquet: AS-norm top-N 81" in capsys.readouterr().err
    bad = write_embeddings(tmp_path / "c3.parquet", [0, 1], np.ones((2, 3)))
    with pytest.raises(ValueError, match="c3.parquet: cohort embedding dimension 3"):
        evaluate_verification(ef, str(tmp_path / "trials.parquet"), "speaker", cohort=bad)


def test_pair_dots_in_chunks_equal_one_product():
    from xclass.eval.scorenorm import pair_dots

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)).astype(np.float32)
    ra, rb = rng.integers(0, 50, 1001), rng.integers(0, 50, 1001)
    whole = np.einsum("ij,ij->i", x[ra], x[rb]).astype(np.float64)
    np.testing.assert_array_equal(pair_dots(x, ra, rb, chunk=64), whole)
    assert pair_dots(x, ra[:0], rb[:0]).shape == (0,)
