"""Template verification (IJB-B / IJB-C style): media-mean, template-sum pooling by hand, the
benchmark's text files and their errors, and ``xclass evaluate --protocol face --templates`` end to
end against scores computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.cli.main import main as xclass
from xclass.eval.templates import read_template_pairs, read_templates, template_embeddings
from xclass.eval.verification import verification_report


def test_pooling_by_hand():
    x = np.array([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    tids, mids = np.array([7, 7, 7, 3]), np.array([1, 1, 2, 5])
    t_ids, f = template_embeddings(x, tids, mids)
    assert t_ids.tolist() == [3, 7]
    # template 7: media 1 = mean([1,0,0], [0,1,0]) = [.5,.5,0]; media 2 = [0,0,1]; sum [.5,.5,1] normalised
    np.testing.assert_allclose(f[1], np.array([0.5, 0.5, 1.0]) / np.sqrt(1.5))
    np.testing.assert_allclose(f[0], np.array([1.0, 1.0, 0]) / np.sqrt(2))


def test_text_files_and_their_errors(tmp_path):
    t = tmp_path / "tid_mid.txt"
    t.write_text("# header\n1.jpg 1 69544\nframes/2.jpg,1,69545\n\n3.jpg 2\n")
    names, tids, mids = read_templates(str(t))
    assert names == ["1.jpg", "frames/2.jpg", "3.jpg"] and tids.tolist() == [1, 1, 2] and mids.tolist() == [69544, 69545, 0]
    p = tmp_path / "pairs.txt"
    p.write_text("1 2 0\n1 1 1\n")
    a, b, same = read_template_pairs(str(p))
    assert a.tolist() == [1, 1] and b.tolist() == [2, 1] and same.tolist() == [False, True]
    for text, what, reader in (("1.jpg x 3\n", "line 1: the template id must be an integer", read_templates),
                               ("1.jpg\n", "line 1: expected 'image template [media]'", read_templates),
                               ("1 2 0\n1 2 2\n", "line 2: the label must be 1", read_template_pairs),
                               ("1 2\n", "line 1: expected 'template_a template_b 1|0'", read_template_pairs)):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ValueError, match=what.replace("[", r"\[").replace("|", r"\|")):
            reader(str(bad))


def _benchmark(tmp_path, n=60, n_t=12):
    """Embeddings of image ids 0..n-1, the dataset's file map, a template file (each template 5
    images in 2 media) and all template pairs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(n), "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(x.reshape(-1)), 6)}), tmp_path / "emb.parquet")
    pq.write_table(pa.table({"id": np.arange(n), "split": ["test"] * n, "label": np.zeros(n, np.int64),
                             "path": [f"img/{i}.jpg" for i in range(n)]}), tmp_path / "files.parquet")
    tids, mids = np.arange(n) % n_t, (np.arange(n) // n_t) % 2
    (tmp_path / "t.txt").write_text("".join(f"img/{i}.jpg {tids[i]} {mids[i]}\n" for i in range(n)))
    pairs = [(i, j, int(i % 3 == j % 3)) for i in range(n_t) for j in range(i + 1, n_t)]
    (tmp_path / "p.txt").write_text("".join(f"{i} {j} {s}\n" for i, j, s in pairs))
    # by hand: unit images; per template, mean per media, sum, normalise; cosine per pair
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    feats = []
    for t in range(n_t):
        media = [u[(tids == t) & (mids == m)].mean(0) for m in (0, 1) if ((tids == t) & (mids == m)).any()]
        v = np.sum(media, 0)
        feats.append(v / np.linalg.norm(v))
    s = np.array([feats[i] @ feats[j] for i, j, _ in pairs])
    return s, np.array([p[2] for p in pairs], bool)


def _run(tmp_path, *extra):
    return xclass(["evaluate", "--protocol", "face", "--embeddings", str(tmp_path / "emb.parquet"),
                   "--templates", str(tmp_path / "t.txt"), "--pairs", str(tmp_path / "p.txt"), "--out",
                   str(tmp_path / "r"), "--no-plots", "--quiet", *extra])


def test_template_evaluation_end_to_end(tmp_path):
    s, same = _benchmark(tmp_path)
    assert _run(tmp_path, "--file-map", str(tmp_path / "files.parquet")) == 0
    got = json.load(open(tmp_path / "r" / "metrics.json"))
    ref = verification_report(s, same, "face")
    for k, v in ref.items():
        assert got["metrics"][k] == pytest.approx(v, abs=1e-5), k
    assert got["header"]["templates"].endswith("t.txt") and (tmp_path / "r" / "hardest_pairs.csv").exists()


def test_template_errors_are_one_line(tmp_path, capsys):
    _benchmark(tmp_path)
    assert _run(tmp_path) == 2                                           # no --file-map
    assert "--templates is for --protocol face, needs --file-map" in capsys.readouterr().err
    with open(tmp_path / "t.txt", "a") as f:
        f.write("img/missing.jpg 0 0\n")
    assert _run(tmp_path, "--file-map", str(tmp_path / "files.parquet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image 'img/missing.jpg' (entry 61) is not in the file map" in err[0]


def test_far_below_1e4_when_measurable():
    rng = np.random.default_rng(0)
    same = np.zeros(120_000, bool)
    same[:1000] = True
    s = rng.normal(size=len(same)) + 3 * same
    out = verification_report(s, same, "face")
    assert "TAR@FAR=1e-05" in out and "TAR@FAR=1e-06" not in out        # 119,000 impostors
    assert "TAR@FAR=1e-05" not in verification_report(s[:50_000], same[:50_000], "face")


def test_report_plots_when_the_det_curve_has_no_inner_point(tmp_path):
    """Every genuine pair below every impostor (EER 100 %, as on a tiny untrained check): the DET
    plot has no point strictly inside (0, 1) and must not stop the report."""
    from xclass.eval.report import write_report

    scores, target = np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False])
    files = write_report(str(tmp_path / "r"), verification_report(scores, target, "speaker"), {},
                         {"scores": scores, "target": target})
    assert {p.split("/")[-1] for p in files["plots"]} == {"roc.png", "det.png", "score_hist.png"}
