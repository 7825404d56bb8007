"""``export-index --run A --run B``: several runs' embeddings fused so that a cosine is the mean of
the runs' cosines (xclass/eval/ensemble.py)."""
import json
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


def test_mean_prob_share_by_hand():
    """Each run's own cosines (its part of the fused vectors), its softmax share on the 1-NN's
    label, averaged over the runs; -1 neighbours count in no run."""
    from scipy.special import softmax

    from xclass.eval.ensemble import mean_prob_share

    rng = np.random.default_rng(3)
    parts_q = [rng.normal(size=(4, 3)), rng.normal(size=(4, 5))]
    parts_g = [rng.normal(size=(4, 6, 3)), rng.normal(size=(4, 6, 5))]
    labels = np.array([[2, 0, 2, 1, -1, -1], [1, 1, 0, 2, 3, 0], [0, 1, 2, 3, 4, 5], [3, 3, 3, 3, 3, -1]])
    q = fuse_embeddings(parts_q)
    nbr = np.stack([fuse_embeddings([parts_g[0][:, k], parts_g[1][:, k]]) for k in range(6)], axis=1)
    got = mean_prob_share(q, nbr, labels, [3, 5], 7.0)
    want = np.zeros(4)
    for pq_, pg in zip(parts_q, parts_g):
        cos = np.einsum("bd,bkd->bk", pq_, pg) / (np.linalg.norm(pq_, axis=1)[:, None] * np.linalg.norm(pg, axis=2))
        for i in range(4):
            ok = labels[i] >= 0
            p = softmax(7.0 * cos[i][ok])
            want[i] += p[labels[i][ok] == labels[i][0]].sum() / 2
    np.testing.assert_allclose(got, want, rtol=1e-5)   # the fused vectors are float32
    assert got[3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="do not split"):
        mean_prob_share(q, nbr, labels, [3, 4], 7.0)


def test_evaluate_ensemble_mean_prob_against_brute_force(two_runs, capsys):
    """``evaluate --open-set-softmax S --ensemble-mean-prob`` on a fused head and fused queries
    (training rows: known, test rows: unknown classes) scores each query by the mean of the runs'
    softmax probabilities of the fused 1-NN class."""
    import pyarrow as pa
    from scipy.special import softmax

    from xclass.eval.open_set import open_set_report

    d, (a, b, _), _, _ = two_runs
    runs = ["--run", a, "--run", b]
    assert xclass(["export-index", *runs, "--head", "--out", str(d / "mp_head")]) == 0
    for split in ("train", "test"):
        assert xclass(["export-index", *runs, "--split", split, "--out", str(d / f"mp_{split}")]) == 0
    tables = [pq.read_table(os.path.join(d, f"mp_{s}", f"{s}_embeddings.parquet")) for s in ("train", "test")]
    test = tables[1].set_column(0, "id", pa.array(np.asarray(tables[1]["id"]) + 10_000))
    queries = pa.concat_tables([tables[0], test])
    assert queries.schema.metadata[b"xclass.ensemble_dims"] == tables[0].schema.metadata[b"xclass.ensemble_dims"]
    qpath = str(d / "mp_queries.parquet")
    pq.write_table(queries, qpath)
    out = str(d / "mp_report")
    assert xclass(["evaluate", "--protocol", "ident", "--index", str(d / "mp_head"), "--gallery",
                   str(d / "mp_head" / "label_embeddings"), "--queries", qpath, "--ks", "1,10",
                   "--open-set-softmax", "4", "--ensemble-mean-prob", "--out", out, "--no-plots"]) == 0
    got = json.load(open(os.path.join(out, "metrics.json")))["metrics"]

    heads = []
    for i, run in enumerate((a, b)):
        assert xclass(["export-index", "--run", run, "--head", "--out", str(d / f"mp_h{i}")]) == 0
        heads.append(_head(str(d / f"mp_h{i}"))[1])
    fused_q = np.stack(queries.column("embedding").to_numpy(zero_copy_only=False))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    dims = json.loads(queries.schema.metadata[b"xclass.ensemble_dims"])
    cos = [unit(fused_q[:, :dims[0]]) @ unit(heads[0]).T, unit(fused_q[:, dims[0]:]) @ unit(heads[1]).T]
    best = ((cos[0] + cos[1]) / 2).argmax(1)
    prob = (softmax(4 * cos[0], axis=1) + softmax(4 * cos[1], axis=1)) / 2
    score = prob[np.arange(len(best)), best]
    q_lab = np.asarray(queries["label"])
    ref = open_set_report(best, score, q_lab, np.isin(q_lab, np.arange(heads[0].shape[0])))
    for m in ("unknown_auroc", "knn_acc_mated", "dir@fpir=0.1"):
        assert got[m] == pytest.approx(ref[m], abs=1e-4)


def test_ensemble_mean_prob_needs_fused_files_and_a_scale(two_runs, capsys):
    d, (a, _, _), _, _ = two_runs
    assert xclass(["export-index", "--run", a, "--head", "--out", str(d / "one_head")]) == 0
    assert xclass(["export-index", "--run", a, "--out", str(d / "one_q")]) == 0
    args = ["evaluate", "--protocol", "ident", "--index", str(d / "one_head"), "--gallery",
            str(d / "one_head" / "label_embeddings"), "--queries", str(d / "one_q" / "test_embeddings.parquet"),
            "--ks", "1", "--ensemble-mean-prob"]
    assert xclass(args) == 2
    assert "needs --open-set-softmax" in capsys.readouterr().err
    assert xclass(args + ["--open-set-softmax", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_embeddings.parquet: not fused" in err[0]


def test_head_export_replaces_stale_rank_files(two_runs):
    """A head directory that held more rank files before keeps only this export's (else the
    directory, as a gallery, would mix old class vectors in)."""
    d, (a, b, _), _, _ = two_runs
    out = str(d / "stale")
    assert xclass(["export-index", "--run", a, "--head", "--out", out]) == 0
    stale = os.path.join(out, "label_embeddings", "labels-00001.parquet")
    os.link(os.path.join(out, "label_embeddings", "labels-00000.parquet"), stale)
    assert xclass(["export-index", "--run", a, "--run", b, "--head", "--out", out, "--overwrite"]) == 0
    assert sorted(os.listdir(os.path.join(out, "label_embeddings"))) == ["labels-00000.parquet"]
    os.link(os.path.join(out, "label_embeddings", "labels-00000.parquet"), stale)
    assert xclass(["export-index", "--run", a, "--head", "--out", out, "--overwrite"]) == 0
    assert sorted(os.listdir(os.path.join(out, "label_embeddings"))) == ["labels-00000.parquet"]


def _train_on_ranks(ctx, cfg_dict):
    from xclass.config import RunConfig
    from xclass.train.loop import train

    train(RunConfig.from_dict(cfg_dict), ctx)


@pytest.mark.dist
def test_heads_saved_on_ranks_fuse_shard_by_shard(tmp_path):
    """Runs saved on the same 2 ranks: one fused file per shard; a run saved on 1 rank with them:
    gathered into one file. Either way the vectors are the fusion of each run's whole head."""
    import pyarrow as pa

    from tests.distutil import run_on_ranks
    from tests.train.common import features_config, write_features_data
    from xclass.eval.embed import export_head
    from xclass.eval.ensemble import export_head_ensemble
    from xclass.parallel import ParallelContext
    from xclass.train.loop import train

    data = write_features_data(str(tmp_path / "feat"))
    runs = [str(tmp_path / f"r{k}") for k in range(3)]
    for k in (0, 1):
        run_on_ranks(_train_on_ranks, 2, features_config(data, runs[k], f"train.seed={k}").to_dict())
    train(features_config(data, runs[2], "train.seed=2"), ParallelContext.single())

    def whole(files):
        t = pa.concat_tables([pq.read_table(f) for f in files])
        return np.asarray(t["id"]), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))

    single = [whole(export_head(r, str(tmp_path / f"h{k}"))) for k, r in enumerate(runs)]
    for pair, n_files in (((0, 1), 2), ((0, 2), 1)):
        files = export_head_ensemble([runs[k] for k in pair], str(tmp_path / f"fused{pair}"))
        assert [os.path.basename(f) for f in files] == [f"labels-{r:05d}.parquet" for r in range(n_files)]
        ids, fused = whole(files)
        np.testing.assert_array_equal(ids, single[0][0])
        np.testing.assert_allclose(fused, fuse_embeddings([single[k][1] for k in pair]), rtol=1e-6, atol=1e-7)
        assert all(pq.read_schema(f).metadata[b"xclass.ensemble_dims"] == b"[8, 8]" for f in files)


@pytest.mark.parametrize("raw", [b"not json", b'{"a": 1}', b"[64]", b"[64, -1]", b'[64, "8"]', b"[true, 8]"])
def test_bad_dims_metadata_is_one_line_naming_the_file(tmp_path, raw):
    import pyarrow as pa

    from xclass.eval.ensemble import DIMS_KEY, read_ensemble_dims

    f = str(tmp_path / "q.parquet")
    t = pa.table({"id": pa.array([0], pa.int64()), "label": pa.array([0], pa.int64()),
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 0.0], pa.float32()), 2)})
    pq.write_table(t.replace_schema_metadata({DIMS_KEY: raw}), f)
    with pytest.raises(ValueError, match=r"q\.parquet: schema metadata xclass.ensemble_dims"):
        read_ensemble_dims([f])
