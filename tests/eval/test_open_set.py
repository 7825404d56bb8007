"""Open-set identification metrics (xclass/eval/open_set.py): by hand, against scikit-learn's
AUROC, and end to end through ``xclass evaluate --protocol ident`` with queries of classes the
gallery lacks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xclass.eval.open_set import dir_at_fpir, dir_fpir_curve, open_set_report, unknown_auroc


def test_dir_at_fpir_by_hand():
    # 10 non-mated top-1 scores 0.0 .. 0.9; at FPIR 0.1 one of them may pass: threshold 0.8
    nonmated = np.arange(10) / 10
    mated = np.array([0.95, 0.85, 0.81, 0.8, 0.5])
    correct = np.array([True, True, False, True, True])
    assert dir_at_fpir(correct, mated, nonmated, 0.1) == pytest.approx(2 / 5)   # 0.95, 0.85 (0.81 wrong label)
    assert dir_at_fpir(correct, mated, nonmated, 0.2) == pytest.approx(3 / 5)   # threshold 0.7: + 0.8
    assert dir_at_fpir(correct, mated, nonmated, 1.0) == pytest.approx(4 / 5)   # every correct one


def test_fpir_never_exceeds_its_target_under_ties():
    nonmated = np.array([0.9, 0.9, 0.9, 0.1])                   # three tied at the top
    assert dir_at_fpir(np.array([True]), np.array([0.9]), nonmated, 0.5) == 0.0  # 0.9 is not above 0.9


def test_unknown_auroc_equals_scikit_learn():
    rng = np.random.default_rng(0)
    m = np.round(rng.normal(1, 1, 200), 1)                       # rounding makes ties
    n = np.round(rng.normal(0, 1, 300), 1)
    ref = roc_auc_score(np.r_[np.ones(200), np.zeros(300)], np.r_[m, n])
    assert unknown_auroc(m, n) == pytest.approx(ref, abs=1e-12)


def test_report_is_empty_for_a_closed_set_and_counts_otherwise():
    lab = np.array([0, 1, 2, 3])
    assert open_set_report(lab, np.ones(4), lab, np.ones(4, bool)) == {}
    out = open_set_report(np.array([0, 1, 5, 5]), np.array([0.9, 0.2, 0.8, 0.1]), lab,
                          np.array([True, True, False, False]), fpirs=(0.5,))
    assert out["n_mated"] == 2 and out["n_nonmated"] == 2 and out["knn_acc_mated"] == 1.0
    assert out["unknown_auroc"] == pytest.approx(0.75)           # 0.9 beats both, 0.2 beats 0.1
    assert out["dir@fpir=0.5"] == pytest.approx(1.0)             # threshold 0.1: 0.9 and 0.2 pass
    assert "dir@fpir=0.1" not in open_set_report(np.array([0, 1, 5, 5]), np.ones(4), lab,
                                                 np.array([True, True, False, False]), fpirs=(0.1,))


def test_ident_with_unknown_queries_end_to_end(tmp_path):
    from tests.eval.conftest import clustered, write_embeddings
    from tests.eval.test_cli import _args, _export
    from xclass.cli.evaluate import add_evaluate_args, run_evaluate

    x, lab = clustered(400, 8, 20, seed=5, noise=0.7)
    g = lab < 12                                                  # classes 12-19: no gallery row
    gal = np.flatnonzero(g)[::2]
    qry = np.setdiff1d(np.arange(400), gal)
    gf = write_embeddings(tmp_path / "gallery.parquet", gal, x[gal], label=lab[gal])
    qf = write_embeddings(tmp_path / "query.parquet", qry, x[qry], label=lab[qry])
    out = _export(tmp_path, [gf])
    assert run_evaluate(_args(add_evaluate_args, ["--protocol", "ident", "--index", out, "--gallery", gf,
                                                  "--queries", qf, "--out", str(tmp_path / "rep"), "--quiet"])) == 0
    got = json.load(open(tmp_path / "rep" / "metrics.json"))["metrics"]
    S = x[qry] @ x[gal].T                                         # brute force
    top = np.argmax(S, axis=1)
    ref = open_set_report(lab[gal][top], S.max(1), lab[qry], np.isin(lab[qry], lab[gal]))
    assert ref["n_nonmated"] == int((lab[qry] >= 12).sum()) > 100
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-6), key
    assert "dir@fpir=0.01" in got and 0 < got["unknown_auroc"] <= 1
    assert (tmp_path / "rep" / "open_set.png").stat().st_size > 0      # the DIR / FPIR curve


def test_softmax_share_by_hand():
    from xclass.eval.ident_eval import softmax_share

    scores = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, -1e30]])
    labels = np.array([[2, 2, 7], [4, 1, -1]])      # -1: no row
    w = np.exp(2.0 * (scores[0] - 0.9))
    np.testing.assert_allclose(softmax_share(scores, labels, 2.0), [(w[0] + w[1]) / w.sum(), 0.5])


def test_ident_open_set_softmax_over_class_vectors_equals_the_classifier_probability(tmp_path):
    """A gallery of one vector per class (as ``export-index --head`` writes) and K >= the classes:
    the open-set score is the softmax classifier's largest probability (scipy's softmax)."""
    from scipy.special import softmax

    from tests.eval.conftest import clustered, write_embeddings
    from tests.eval.test_cli import _args, _export
    from xclass.cli.evaluate import add_evaluate_args, run_evaluate

    x, lab = clustered(300, 8, 15, seed=3, noise=0.8)
    centres = np.stack([x[lab == c].mean(0) for c in range(10)])    # classes 10-14: unknown
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    gf = write_embeddings(tmp_path / "classes.parquet", np.arange(10), centres, label=np.arange(10))
    qf = write_embeddings(tmp_path / "query.parquet", np.arange(300), x, label=lab)
    out = _export(tmp_path, [gf])
    rep = tmp_path / "rep"
    assert run_evaluate(_args(add_evaluate_args, ["--protocol", "ident", "--index", out, "--gallery", gf,
                                                  "--queries", qf, "--ks", "1,10", "--open-set-softmax", "8",
                                                  "--out", str(rep), "--quiet"])) == 0
    got = json.load(open(rep / "metrics.json"))["metrics"]
    cos = x @ centres.T
    ref = open_set_report(cos.argmax(1), softmax(8 * cos, axis=1).max(1), lab, lab < 10)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-5), key
    plain = open_set_report(cos.argmax(1), cos.max(1), lab, lab < 10)
    assert plain["unknown_auroc"] != pytest.approx(ref["unknown_auroc"], abs=1e-4)   # the score changed
    for bad in (["--open-set-softmax", "0"], ["--open-set-softmax", "nan"]):
        assert run_evaluate(_args(add_evaluate_args, ["--protocol", "ident", "--index", out, "--gallery", gf,
                                                      "--queries", qf, "--quiet", *bad])) == 2


def test_ident_gallery_directory_of_files_equals_one_file(tmp_path):
    """A head saved on two ranks: --gallery takes the directory of its files."""
    from tests.eval.conftest import clustered, write_embeddings
    from tests.eval.test_cli import _args, _export
    from xclass.cli.evaluate import add_evaluate_args, run_evaluate

    x, lab = clustered(200, 8, 10, seed=4, noise=0.8)
    centres = np.stack([x[lab == c].mean(0) for c in range(8)])
    one = write_embeddings(tmp_path / "one.parquet", np.arange(8), centres, label=np.arange(8))
    (tmp_path / "ranks").mkdir()
    write_embeddings(tmp_path / "ranks" / "labels-00000.parquet", np.arange(5), centres[:5], label=np.arange(5))
    write_embeddings(tmp_path / "ranks" / "labels-00001.parquet", np.arange(5, 8), centres[5:], label=np.arange(5, 8))
    qf = write_embeddings(tmp_path / "query.parquet", np.arange(200), x, label=lab)
    out = _export(tmp_path, [one])
    got = []
    for gallery in (one, str(tmp_path / "ranks")):
        rep = tmp_path / f"rep{len(got)}"
        assert run_evaluate(_args(add_evaluate_args, ["--protocol", "ident", "--index", out, "--gallery", gallery,
                                                      "--queries", qf, "--open-set-softmax", "8", "--out", str(rep),
                                                      "--quiet"])) == 0
        got.append(json.load(open(rep / "metrics.json"))["metrics"])
    assert got[0] == got[1] and got[0]["n_nonmated"] > 0


def test_dir_fpir_curve_against_brute_force_and_dir_at_fpir():
    rng = np.random.default_rng(7)
    nonmated = np.round(rng.normal(size=300), 1)          # many ties
    mated = np.round(rng.normal(1.0, 1.0, size=200), 1)
    correct = rng.random(200) < 0.8
    fpir, dir_ = dir_fpir_curve(correct, mated, nonmated)
    thresholds = np.r_[np.unique(nonmated)[::-1], -np.inf]
    np.testing.assert_allclose(fpir, [(nonmated > t).mean() for t in thresholds])
    np.testing.assert_allclose(dir_, [(correct & (mated > t)).mean() for t in thresholds])
    assert fpir[0] == 0 and fpir[-1] == 1 and np.all(np.diff(fpir) > 0) and np.all(np.diff(dir_) >= 0)
    for f in (0.01, 0.05, 0.1, 0.5):                      # the metric is the curve's best point within f
        assert dir_at_fpir(correct, mated, nonmated, f) == pytest.approx(dir_[fpir <= f + 1e-12].max())
