"""Synthetic generators: counts, open-set splits, pairs/trials, Zipf tail, reproducibility,
atomic output, validation of every written file, and learnability."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from xclass.data import GENERATORS, TASKS, make_data, validate_file
from xclass.data.arrow import table_to_numpy
from xclass.models.decoders import DECODERS

SMALL = {"face": dict(image_size=12), "speaker": dict(min_frames=8, max_frames=20), "quic": {}, "xmc": {}}


def read(path):
    return table_to_numpy(pq.read_table(path))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    out = {}
    for task in TASKS:
        kw = dict(num_rows=3000, num_test_rows=500) if task == "xmc" else \
            dict(rows_per_class=6, test_classes=7, test_rows_per_class=4, num_pairs=200)
        d = str(root / task)
        out[task] = (d, make_data(task, d, 30, seed=11, progress=False, row_group_rows=64, **kw, **SMALL[task]))
    return out


def test_registry_covers_tasks():
    assert GENERATORS.names() == sorted(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_outputs_validate_and_meta_matches(datasets, task):
    d, meta = datasets[task]
    on_disk = json.load(open(os.path.join(d, "meta.json")))
    assert on_disk == json.loads(json.dumps(meta)) and on_disk["task"] == task
    total = meta["num_classes"] + meta["test_classes"]
    for split in ("train", "test"):
        info = meta["splits"][split]
        lo, hi = info["label_range"]
        rows = sum(validate_file(os.path.join(d, f), task, hi)["num_rows"] for f in info["files"])
        assert rows == info["rows"] and hi <= total
    if task == "xmc":
        assert validate_file(os.path.join(d, "labels.parquet"), "xmc_labels", 30)["num_rows"] == 30
    assert not [f for f in os.listdir(os.path.dirname(d)) if ".tmp-" in f]


@pytest.mark.parametrize("task", ["face", "speaker", "quic"])
def test_open_set_counts_and_disjoint_identities(datasets, task):
    d, _ = datasets[task]
    tr, te = read(os.path.join(d, "train.parquet")), read(os.path.join(d, "test.parquet"))
    np.testing.assert_array_equal(np.bincount(tr["label"]), np.full(30, 6))
    np.testing.assert_array_equal(np.bincount(te["label"] - 30), np.full(7, 4))
    assert set(tr["label"]).isdisjoint(te["label"])
    np.testing.assert_array_equal(np.sort(np.concatenate([tr["id"], te["id"]])), np.arange(30 * 6 + 7 * 4))
    # Rows are class-interleaved: consecutive rows rarely share a class.
    assert np.mean(tr["label"][1:] == tr["label"][:-1]) < 0.2


@pytest.mark.parametrize("task,fname,cols", [("face", "pairs.parquet", ("a", "b", "same")),
                                             ("speaker", "trials.parquet", ("enroll", "test", "target"))])
def test_pairs_balanced_and_consistent(datasets, task, fname, cols):
    d, _ = datasets[task]
    te = read(os.path.join(d, "test.parquet"))
    label_of = dict(zip(te["id"].tolist(), te["label"].tolist()))
    p = read(os.path.join(d, fname))
    a, b, same = p[cols[0]], p[cols[1]], p[cols[2]]
    assert len(a) == 200 and same.sum() == 100
    assert set(a) | set(b) <= set(label_of)
    la, lb = np.array([label_of[x] for x in a]), np.array([label_of[x] for x in b])
    np.testing.assert_array_equal(la == lb, same)
    assert np.all(a != b)


def test_quic_gallery_query(datasets):
    d, _ = datasets["quic"]
    te, gq = read(os.path.join(d, "test.parquet")), read(os.path.join(d, "gallery_query.parquet"))
    np.testing.assert_array_equal(np.sort(gq["id"]), np.sort(te["id"]))
    label_of = dict(zip(te["id"].tolist(), te["label"].tolist()))
    lab = np.array([label_of[i] for i in gq["id"]])
    for c in np.unique(lab):
        assert gq["is_query"][lab == c].sum() == 2  # 4 rows per class: 2 gallery, 2 query


def test_xmc_zipf_tail_and_topics(tmp_path):
    meta = make_data("xmc", str(tmp_path / "x"), 2000, num_rows=20000, seed=3, progress=False)
    labels = read(str(tmp_path / "x" / "labels.parquet"))
    count = labels["train_count"][np.argsort(labels["rank"])]  # by popularity rank
    head = count[:200].sum() / count.sum()
    assert 0.4 < head < 0.9  # top 10% of labels carry most occurrences
    r = np.arange(1, 2001)
    sel = (r >= 5) & (r <= 500) & (count > 0)
    slope = np.polyfit(np.log(r[sel]), np.log(count[sel]), 1)[0]
    assert -1.4 < slope < -0.6, slope  # generator alpha = 1.0
    assert meta["labels"]["labels_with_train_rows"] < 2000  # a real tail: some labels unseen
    tr = read(str(tmp_path / "x" / "train.parquet"))
    off, lab = tr["labels_offsets"], tr["labels"]
    k = np.diff(off)
    assert k.min() >= 1 and 2.0 < k.mean() < 4.0
    topic = dict(zip(labels["label_id"].tolist(), labels["topic"].tolist()))
    t = np.array([topic[x] for x in lab])
    first = np.repeat(t[off[:-1]], k)
    n_topics = meta["inputs"]["num_topics"]
    same_topic = (t == first)[np.arange(len(t)) != np.repeat(off[:-1], k)].mean()
    assert same_topic > 0.5 > 5.0 / n_topics  # co-occurrence through topics, far above chance


def test_xmc_tokens_carry_label_signal(datasets):
    """Label-text overlap predicts a true label far better than the most frequent label."""
    d, _ = datasets["xmc"]
    doc, lab = read(os.path.join(d, "test.parquet")), read(os.path.join(d, "labels.parquet"))
    L, V = 30, 20000
    lab_bow = np.zeros((L, V), np.float32)
    lt = lab["tokens"].reshape(L, -1)
    np.add.at(lab_bow, (np.repeat(lab["label_id"], lt.shape[1]), lt.reshape(-1)), 1.0)
    lab_bow[:, :] = lab_bow > 0
    off, tok = doc["tokens_offsets"], doc["tokens"]
    n = len(off) - 1
    doc_bow = np.zeros((n, V), np.float32)
    np.add.at(doc_bow, (np.repeat(np.arange(n), np.diff(off)), tok), 1.0)
    pred = (doc_bow @ lab_bow.T).argmax(1)
    truth = [set(doc["labels"][doc["labels_offsets"][i]:doc["labels_offsets"][i + 1]]) for i in range(n)]
    p1 = np.mean([p in t for p, t in zip(pred, truth)])
    top = np.argmax(lab["train_count"])
    base = np.mean([top in t for t in truth])
    assert p1 > 0.6 and p1 > base + 0.2, (p1, base)


@pytest.mark.parametrize("task", TASKS)
def test_reproducible_with_seed(tmp_path, task):
    kw = dict(num_rows=300) if task == "xmc" else dict(rows_per_class=3, test_classes=2)
    tabs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_data(task, str(tmp_path / name), 10, seed=seed, progress=False, **kw, **SMALL[task])
        tabs.append(pq.read_table(str(tmp_path / name / "train.parquet")))
    assert tabs[0].equals(tabs[1])
    assert not tabs[0].equals(tabs[2])


def test_atomic_output(tmp_path):
    out = str(tmp_path / "face")
    make_data("face", out, 4, rows_per_class=2, seed=0, progress=False, image_size=8)
    with pytest.raises(FileExistsError):
        make_data("face", out, 4, rows_per_class=2, seed=0, progress=False, image_size=8)
    with pytest.raises(ValueError, match="rows per test class"):  # fails after train was written
        make_data("face", str(tmp_path / "bad"), 4, rows_per_class=2, test_rows_per_class=1,
                  progress=False, image_size=8)
    assert sorted(os.listdir(tmp_path)) == ["face"]  # no partial 'bad', no temp dirs
    meta = make_data("face", out, 4, rows_per_class=3, seed=0, progress=False, image_size=8, overwrite=True)
    assert meta["splits"]["train"]["rows"] == 12


def test_part_files(tmp_path):
    meta = make_data("quic", str(tmp_path / "q"), 50, rows_per_class=40, rows_per_file=500,
                     progress=False, row_group_rows=100)
    files = meta["splits"]["train"]["files"]
    assert len(files) == 4 and all(f.startswith("train/part-") for f in files)
    n = sum(pq.ParquetFile(str(tmp_path / "q" / f)).metadata.num_rows for f in files)
    assert n == 2000


def test_unknown_generator_option_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="face.*image_sise"):
        make_data("face", str(tmp_path / "f"), 4, progress=False, image_sise=8)


def _nearest_mean(x, y):
    """(accuracy of nearest class mean on all features, best accuracy using one feature);
    means fitted on even rows, scored on odd rows."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    fit = np.arange(len(y)) % 2 == 0
    cls = np.unique(y)
    mu = np.stack([x[fit & (y == c)].mean(0) for c in cls])
    xt, yt = x[~fit], y[~fit]
    d = (xt ** 2).sum(1)[:, None] - 2 * xt @ mu.T + (mu ** 2).sum(1)[None]
    acc = np.mean(cls[d.argmin(1)] == yt)
    single = max(np.mean(cls[np.abs(xt[:, f:f + 1] - mu[None, :, f]).argmin(1)] == yt)
                 for f in range(x.shape[1]))
    return acc, single


def _raw_features(task, b, meta):
    """Raw inputs as the training decoders produce them, flattened per row."""
    x, _ = DECODERS.get(task)(b, meta)
    n = len(b["id"])
    if task == "face":
        return x["image"].permute(0, 2, 3, 1).reshape(n, -1).float().numpy()
    if task == "speaker":
        return x["fbank"].numpy().sum(1) / x["lengths"].numpy()[:, None]  # utterance-mean log-mel
    seq = np.stack([x["pkt_sizes"].numpy() / 1500.0, x["pkt_dirs"].numpy(), np.log1p(x["pkt_iat"].numpy())], 2)
    return np.concatenate([seq.reshape(n, -1), np.log1p(x["flow_stats"].numpy())], 1)


@pytest.mark.parametrize("task", ["face", "speaker", "quic"])
def test_learnable_but_not_trivial(tmp_path, task):
    """Nearest class mean on raw inputs is far above chance (1/40), no single raw feature is."""
    meta = make_data(task, str(tmp_path / task), 40, rows_per_class=12, seed=2, progress=False, **SMALL[task])
    b = read(str(tmp_path / task / "train.parquet"))
    acc, single = _nearest_mean(_raw_features(task, b, meta), b["label"])
    # face has pose warps and occluders on purpose (raw pixels must not solve it): lower bar
    floor = 0.25 if task == "face" else 0.4
    assert acc > floor and single < 0.3 and acc > 2.5 * single, (acc, single)


def test_face_warp_grid_hand_values():
    """The pose warp in closed form: identity = shift only; 90 degrees maps (x, y) -> (c - (y - c), ...)."""
    from xclass.data.gen_face import FaceGenerator

    g = FaceGenerator(seed=0, image_size=5)
    one = np.ones(1, np.float32)
    u, v = g.warped_grid(one * 1.0, one * -2.0, one * 0.0, one)
    yy, xx = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    np.testing.assert_allclose(u[0], xx - 1.0, atol=1e-6)
    np.testing.assert_allclose(v[0], yy + 2.0, atol=1e-6)
    u, v = g.warped_grid(one * 0, one * 0, one * np.float32(np.pi / 2), one * 2.0)
    # centre 2: u = 2 - 2 (y - 2), v = 2 + 2 (x - 2)
    np.testing.assert_allclose(u[0], 2 - 2 * (yy - 2), atol=1e-5)
    np.testing.assert_allclose(v[0], 2 + 2 * (xx - 2), atol=1e-5)
    # no warp, no shift: pattern equals the unwarped closed form (same as before warps existed)
    lab = np.array([3, 7])
    z = np.zeros(2, np.float32)
    np.testing.assert_allclose(g.pattern(lab, z, z), g.pattern(lab, z, z, z, np.ones(2, np.float32)))


def test_face_occluder_fraction():
    from xclass.data.gen_face import FaceGenerator

    g = FaceGenerator(seed=0, image_size=20, occlude=1.0)
    img = np.full((400, 20, 20, 3), 5.0, np.float32)  # 5 is outside the occluder colour range
    out = g._occluders(img, np.random.default_rng(0))
    frac = (out[..., 0] != 5.0).mean(axis=(1, 2))
    assert frac.min() >= 0.2 ** 2 and frac.max() <= 0.55 ** 2  # 25-50 % of each side (pixel rounding)
    assert abs(frac.mean() - 0.375 ** 2) < 0.03
    assert (g._occluders(img, np.random.default_rng(0)) == out).all()
    assert (FaceGenerator(seed=0, image_size=20, occlude=0.0)._occluders(img, np.random.default_rng(0)) == 5).all()
