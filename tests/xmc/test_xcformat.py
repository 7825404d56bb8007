"""XC-repository formats: a small file written here round-trips through Parquet and back to the
same text (BoW and split formats give the same Parquet), malformed lines raise errors naming the
file and line, and the imported data trains through xclass.train.loop.train (loss decreases)."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from xclass.data.schema import DataError
from xclass.importers import xcformat as X

NF, NL = 60, 20


def make_rows(n, seed):
    """Learnable rows: each label owns features 3l..3l+2; plus noise features; one row without
    labels and one without features."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        labels = sorted(rng.choice(NL, size=rng.integers(1, 3), replace=False).tolist())
        feats = {int(3 * l + rng.integers(0, 3)) for l in labels} | set(rng.integers(0, NF, 2).tolist())
        idx = sorted(feats)
        rows.append((labels, idx, [float(np.float32(rng.random() + 0.1)) for _ in idx]))
    rows[1] = ([], rows[1][1], rows[1][2])
    rows[2] = (rows[2][0], [], [])
    return rows


@pytest.fixture()
def xc_files(tmp_path):
    tr, te = make_rows(240, 0), make_rows(40, 1)
    X.write_bow(str(tmp_path / "train.txt"), tr, NF, NL)
    X.write_bow(str(tmp_path / "test.txt"), te, NF, NL)
    return tmp_path, tr, te


def _parquet_rows(path):
    t = pq.read_table(path).sort_by("id")  # the train split is stored in a seeded random order
    return list(zip(t.column("labels").to_pylist(), t.column("tokens").to_pylist(),
                    t.column("token_weights").to_pylist())), t.column("id").to_pylist()


def test_bow_roundtrip(xc_files):
    d, tr, te = xc_files
    meta = X.import_xc(str(d / "data"), str(d / "train.txt"), str(d / "test.txt"), progress=False)
    assert meta["num_classes"] == NL and meta["inputs"]["tokens"]["vocab_size"] == NF
    got_tr, ids_tr = _parquet_rows(d / "data" / "train.parquet")
    got_te, ids_te = _parquet_rows(d / "data" / "test.parquet")
    assert got_tr == [tuple(r) for r in tr] and got_te == [tuple(r) for r in te]
    assert ids_tr == list(range(240)) and ids_te == list(range(240, 280))
    counts = pq.read_table(d / "data" / "labels.parquet").column("train_count").to_numpy()
    assert counts.tolist() == np.bincount([l for r in tr for l in r[0]], minlength=NL).tolist()
    X.export_bow(str(d / "data"), "train", str(d / "back.txt"))
    assert (d / "back.txt").read_text() == (d / "train.txt").read_text()


def test_split_format_equals_bow(xc_files):
    d, tr, te = xc_files
    for name, rows in (("trn", tr), ("tst", te)):
        X.write_sparse(str(d / f"{name}_X_Xf.txt"), [(r[1], r[2]) for r in rows], NF)
        X.write_sparse(str(d / f"{name}_X_Y.txt"), [(r[0], [1.0] * len(r[0])) for r in rows], NL)
    (d / "Y.txt").write_text("".join(f"label {i}\n" for i in range(NL)))
    X.write_sparse(str(d / "lbl_X_Xf.txt"), [([3 * i, 3 * i + 1], [1.0, 1.0]) for i in range(NL)], NF)
    X.import_xc(str(d / "split"), str(d / "trn_X_Xf.txt"), str(d / "tst_X_Xf.txt"),
                train_labels=str(d / "trn_X_Y.txt"), test_labels=str(d / "tst_X_Y.txt"),
                label_text=str(d / "Y.txt"), label_features=str(d / "lbl_X_Xf.txt"), progress=False)
    X.import_xc(str(d / "bow"), str(d / "train.txt"), str(d / "test.txt"), progress=False)
    for split in ("train", "test"):
        assert _parquet_rows(d / "split" / f"{split}.parquet") == _parquet_rows(d / "bow" / f"{split}.parquet")
    lab = pq.read_table(d / "split" / "labels.parquet")
    assert lab.column("text").to_pylist()[7] == "label 7" and lab.column("tokens").to_pylist()[7] == [21, 22]


BAD = [
    ("3 10\n", 1, "header"),
    ("1 10 5\n0,x 1:1.0\n", 2, "bad label id"),
    ("2 10 5\n0 1:1.0\n7 1:1.0\n", 3, "label 7 >= num_labels 5"),
    ("1 10 5\n0 1-1.0\n", 2, "bad 'index:value'"),
    ("1 10 5\n0 1:nan\n", 2, "bad 'index:value'"),
    ("1 10 5\n0 12:1.0\n", 2, "index 12 >= number of columns 10"),
    ("1 10 5\n0 2:1.0 2:3.0\n", 2, "duplicate index"),
    ("3 10 5\n0 1:1\n1 2:1\n", 3, "header says 3 rows, file has 2"),
]


@pytest.mark.parametrize("text,line,msg", BAD, ids=[b[2].split()[0] + str(i) for i, b in enumerate(BAD)])
def test_malformed_lines_name_file_and_line(tmp_path, text, line, msg):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    good = tmp_path / "good.txt"
    X.write_bow(str(good), [([0], [1], [1.0])], 10, 5)
    with pytest.raises(DataError) as e:
        X.import_xc(str(tmp_path / "out"), str(p), str(good), progress=False)
    assert str(p) in str(e.value) and f"line {line}:" in str(e.value) and msg in str(e.value), str(e.value)
    assert not os.path.exists(tmp_path / "out"), "a failed import must leave no output directory"


def test_imported_xc_data_trains(xc_files):
    from xclass.config import load_config
    from xclass.train.loop import train
    from xclass.train.report import read_metrics
    import xclass.heads.xmc  # noqa: F401  (registers the heads)

    d, _, _ = xc_files
    X.import_xc(str(d / "data"), str(d / "train.txt"), str(d / "test.txt"), progress=False)
    cfg = load_config(None, [
        "data.task=xmc", f"data.path={d / 'data'}", "data.batch_size=32", "model.encoder=embbag",
        "model.embedding_dim=16", "model.params={token_dim: 32, hidden: []}", "head.name=dual_decoupled",
        "head.params={scale: 10.0}", "optim.name=adamw", "optim.lr=0.02", "optim.weight_decay=0.0",
        "optim.schedule=constant", "train.epochs=6", "train.log_every=1", f"train.out_dir={d / 'run'}",
        "train.progress=false"])
    train(cfg)
    losses = [r["loss"] for r in read_metrics(str(d / "run")) if "loss" in r]
    assert len(losses) == 42
    assert np.mean(losses[-7:]) < 0.5 * np.mean(losses[:7]), losses
