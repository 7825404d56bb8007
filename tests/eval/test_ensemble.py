"""``export-index --run A --run B``: several runs' embeddings fused so that a cosine is the mean of
the runs' cosines (xclass/eval/ensemble.py)."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from xclass.cli.main import main as xclass
from xclass.eval.ensemble import fuse_embeddings


def _cos(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def test_fused_cosine_is_the_mean_of_the_parts_cosines():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(7, d)) * rng.uniform(0.1, 10, size=(7, 1)) for d in (4, 9, 3)]
    fused = fuse_embeddings(parts)
    assert fused.shape == (7, 16) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, rtol=1e-6)
    want = sum(_cos(p) for p in parts) / 3
    np.testing.assert_allclose(fused @ fused.T, want, rtol=1e-5, atol=1e-6)
    one = rng.normal(size=(5, 6))
    np.testing.assert_allclose(fuse_embeddings([one]), one / np.linalg.norm(one, axis=1, keepdims=True), rtol=1e-6)


def test_fuse_keeps_a_zero_row_zero_and_refuses_bad_shapes():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[1.0], [2.0]])
    fused = fuse_embeddings([a, b])
    np.testing.assert_allclose(fused[0], [0, 0, 1 / np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(fused[1], np.array([0.6, 0.8, 1.0]) / np.sqrt(2), rtol=1e-6)
    with pytest.raises(ValueError, match="every part must be"):
        fuse_embeddings([a, np.ones((3, 2))])
    with pytest.raises(ValueError, match="at least one"):
        fuse_embeddings([])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ensemble")

    def data(name, seed):
        path = str(d / name)
        assert xclass(["make-data", "--task", "face", "--num-classes", "10", "--rows-per-class", "4",
                       "--test-classes", "3", "--opt", "image_size=16", "--seed", str(seed), "--out", path]) == 0
        return path

    own, other = data("own", 0), data("other", 5)
    runs = []
    for seed, path in ((0, own), (1, own), (2, other)):
        run = str(d / f"run{seed}")
        assert xclass(["train", "--config", "configs/face/cpu.yaml", f"data.path={path}", f"train.out_dir={run}",
                       "train.progress=false", "train.max_steps=2", "data.batch_size=16", f"train.seed={seed}"]) == 0
        runs.append(run)
    return d, runs, own, other


def _emb(out, split="test"):
    t = pq.read_table(os.path.join(out, f"{split}_embeddings.parquet"))
    return t, np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


def test_export_of_two_runs_is_the_fusion_of_each_runs_export(two_runs):
    d, (a, b, _), _, _ = two_runs
    singles = []
    for i, run in enumerate((a, b)):
        assert xclass(["export-index", "--run", run, "--out", str(d / f"one{i}")]) == 0
        singles.append(_emb(str(d / f"one{i}")))
    out = str(d / "both")
    assert xclass(["export-index", "--run", a, "--run", b, "--out", out]) == 0
    t, fused = _emb(out)
    assert t.column("id").to_pylist() == singles[0][0].column("id").to_pylist()
    assert t.column("label").to_pylist() == singles[0][0].column("label").to_pylist()
    assert not np.allclose(_cos(singles[0][1]), _cos(singles[1][1]), atol=1e-3)   # two different runs
    np.testing.assert_allclose(fused @ fused.T, (_cos(singles[0][1]) + _cos(singles[1][1])) / 2, atol=1e-5)
    assert os.path.exists(os.path.join(out, "manifest.json"))                       # and indexed as usual


def test_ensemble_of_runs_on_other_data_needs_data(two_runs, capsys):
    d, (a, _, c), _, other = two_runs
    out = str(d / "mixed")
    assert xclass(["export-index", "--run", a, "--run", c, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --data" in err[0] and c in err[0]
    assert not os.path.exists(os.path.join(out, "test_embeddings.parquet"))
    assert xclass(["export-index", "--run", a, "--run", c, "--data", other, "--out", out]) == 0
    t, fused = _emb(out)
    assert t.num_rows == pq.read_table(os.path.join(other, "test.parquet")).num_rows and fused.shape[1] > 0


def _head(out):
    t = pq.read_table(os.path.join(out, "label_embeddings", "labels-00000.parquet"))
    return t, np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


def test_head_of_two_runs_fuses_the_class_vectors(two_runs):
    """Fused queries against fused class vectors: each cosine is the mean of the two runs' own
    query-to-class cosines (so the scale times it is the mean logit)."""
    d, (a, b, _), _, _ = two_runs
    heads, queries = [], []
    for i, run in enumerate((a, b)):
        assert xclass(["export-index", "--run", run, "--head", "--out", str(d / f"head{i}")]) == 0
        assert xclass(["export-index", "--run", run, "--out", str(d / f"q{i}")]) == 0
        heads.append(_head(str(d / f"head{i}")))
        queries.append(_emb(str(d / f"q{i}"))[1])
    assert xclass(["export-index", "--run", a, "--run", b, "--head", "--out", str(d / "heads")]) == 0
    assert xclass(["export-index", "--run", a, "--run", b, "--out", str(d / "q_both")]) == 0
    t, fused = _head(str(d / "heads"))
    assert t.column("id").to_pylist() == heads[0][0].column("id").to_pylist() == t.column("label").to_pylist()
    q = _emb(str(d / "q_both"))[1]

    def cos(x, y):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T

    want = (cos(queries[0], heads[0][1]) + cos(queries[1], heads[1][1])) / 2
    assert not np.allclose(cos(queries[0], heads[0][1]), want, atol=1e-3)
    np.testing.assert_allclose(q @ fused.T, want, atol=1e-5)
