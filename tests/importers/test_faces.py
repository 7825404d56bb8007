"""Face importer: PNG/JPEG/PGM per identity folder, resize + center crop by hand-made images,
open-set test split with pairs, validation, and errors naming the file."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xclass.importers import ImportError_
from xclass.importers.faces import import_faces, load_face


def test_center_crop_of_wide_image_keeps_the_middle(tmp_path):
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, :10] = (255, 0, 0)
    img[:, 10:20] = (0, 255, 0)
    img[:, 20:] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "w.png")
    out = load_face(str(tmp_path / "w.png"), 10)  # shorter side already 10: crop columns 10..19
    assert out.shape == (10, 10, 3) and (out == (0, 255, 0)).all()
    # tall image, downscaled 2x: 40x20 -> 20x10... shorter side 20 -> 10, then rows 5..14 of 20
    tall = np.zeros((40, 20), np.uint8)
    tall[:10], tall[10:30], tall[30:] = 0, 200, 0
    Image.fromarray(tall).save(tmp_path / "t.pgm")
    out = load_face(str(tmp_path / "t.pgm"), 10)
    assert out.shape == (10, 10, 3) and (out[:, :, 0] == out[:, :, 2]).all()  # grey -> equal channels
    assert (out[1:-1] == 200).all()  # the middle band fills the crop (edge rows blend by bilinear)


def _tree(root, n_ids=5, per_id=4):
    colors = {}
    for i in range(n_ids):
        d = root / f"person{i:02d}"
        os.makedirs(d)
        c = (40 * i, 255 - 40 * i, 100)
        colors[f"person{i:02d}"] = c
        for j in range(per_id):
            arr = np.full((24 + j, 20, 3), c, np.uint8)
            ext = ("png", "jpg", "png", "pgm")[j]
            im = Image.fromarray(arr)
            (im.convert("L") if ext == "pgm" else im).save(d / f"{j}.{ext}")
    return colors


def test_import_tree_with_held_out_identities(tmp_path):
    from xclass.data.validate import validate_file

    colors = _tree(tmp_path / "faces")
    meta = import_faces(str(tmp_path / "faces"), str(tmp_path / "out"), size=8, test_classes=2, num_pairs=8,
                        show_progress=False)
    assert meta["num_classes"] == 3 and meta["test_classes"] == 2
    tr = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    te = pq.read_table(tmp_path / "out" / "test.parquet").to_pydict()
    assert len(tr["id"]) == 12 and len(te["id"]) == 8
    assert set(tr["label"]) == {0, 1, 2} and set(te["label"]) == {3, 4}
    names = meta["class_names"]
    for img, y, rid in zip(tr["image"], tr["label"], tr["id"]):
        a = np.asarray(img, np.uint8).reshape(8, 8, 3)
        assert a.shape == (8, 8, 3)
        if rid % 4 in (0, 2):  # PNG rows are exact (files are sorted: 0.png, 1.jpg, 2.png, 3.pgm)
            assert (a == colors[names[y]]).all()
    validate_file(str(tmp_path / "out" / "train.parquet"), "face", 3, image_shape=(8, 8, 3))
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pydict()
    lab = dict(zip(te["id"], te["label"]))
    assert len(pairs["a"]) == 8 and sum(pairs["same"]) == 4
    assert all((lab[a] == lab[b]) == s and a != b for a, b, s in zip(pairs["a"], pairs["b"], pairs["same"]))


def test_pairs_balanced_and_shuffled_by_default(tmp_path):
    """Few same-identity pairs (2 ids x 4 images = 12) and num_pairs=100: 12 genuine + 12 impostors,
    interleaved (the old file had all genuine pairs first, then 88 impostors)."""
    _tree(tmp_path / "faces")
    import_faces(str(tmp_path / "faces"), str(tmp_path / "out"), size=8, test_classes=2, num_pairs=100,
                 show_progress=False)
    same = pq.read_table(tmp_path / "out" / "pairs.parquet").column("same").to_pylist()
    assert len(same) == 24 and sum(same) == 12
    assert same != sorted(same, reverse=True) and same != sorted(same)


def test_balanced_pairs_impostor_ratio():
    from xclass.importers.common import balanced_pairs

    labels = np.repeat(np.arange(20), 3)                     # 20 x 3 pairs = 60 same-label pairs
    p = balanced_pairs(np.arange(60) + 100, labels, 1000, seed=1, impostor_ratio=2.0)
    assert int(p["same"].sum()) == 60 and len(p["same"]) == 180
    lab = dict(zip(np.arange(60) + 100, labels))
    assert all((lab[a] == lab[b]) == s for a, b, s in zip(p["a"], p["b"], p["same"]))
    assert len({(a, b) for a, b in zip(p["a"], p["b"])}) == 180


def test_corrupt_image_is_named(tmp_path):
    _tree(tmp_path / "faces", n_ids=2, per_id=1)
    (tmp_path / "faces" / "person01" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ImportError_, match=r"person01/bad\.jpg"):
        import_faces(str(tmp_path / "faces"), str(tmp_path / "out"), size=8, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_file_at_root_needs_label_regex(tmp_path):
    os.makedirs(tmp_path / "flat")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "7_bob_1.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "7_ann_1.png")
    with pytest.raises(ImportError_, match="one folder per class"):
        import_faces(str(tmp_path / "flat"), str(tmp_path / "out"), size=8, show_progress=False)
    meta = import_faces(str(tmp_path / "flat"), str(tmp_path / "out"), size=8, label_regex=r"^\d+_([a-z]+)_",
                        show_progress=False)
    assert meta["class_names"] == ["ann", "bob"]
    for kw, flag in (({"label_regex": "(["}, "--label-regex"), ({"label_regex": r"^\d+_([a-z]+)_", "test_regex": "("}, "--test-regex")):
        with pytest.raises(ImportError_, match=f"{flag} '.*' is not a regular expression"):  # was a re.error traceback
            import_faces(str(tmp_path / "flat"), str(tmp_path / "o2"), size=8, show_progress=False, **kw)
    assert not os.path.exists(tmp_path / "o2")


def test_test_only_import_holds_every_file_out(tmp_path, capsys):
    """--test-only: a benchmark imported only to be encoded by a model trained elsewhere."""
    import json

    from xclass.cli.main import main as xclass

    _tree(tmp_path / "faces", n_ids=3, per_id=4)
    meta = import_faces(str(tmp_path / "faces"), str(tmp_path / "out"), size=8, test_only=True, num_pairs=20,
                        show_progress=False)
    assert meta["num_classes"] == 0 and meta["test_classes"] == 3 and list(meta["splits"]) == ["test"]
    te = pq.read_table(tmp_path / "out" / "test.parquet").to_pydict()
    assert sorted(set(te["label"])) == [0, 1, 2] and len(te["id"]) == 12
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pydict()
    assert set(pairs["a"]) | set(pairs["b"]) <= set(te["id"]) and any(pairs["same"])
    # one class (a flat folder of crops) and no pairs wanted: no pairs file, still a dataset
    flat = tmp_path / "flat"
    os.makedirs(flat)
    for j in range(3):
        Image.fromarray(np.full((10, 10, 3), 50 * j, np.uint8)).save(flat / f"{j}.png")
    meta = import_faces(str(flat), str(tmp_path / "one"), size=8, test_only=True, num_pairs=0,
                        label_regex=r"^()", show_progress=False)
    assert meta["test_classes"] == 1 and not (tmp_path / "one" / "pairs.parquet").exists()
    with pytest.raises(ImportError_, match="--test-only puts every file in the test split"):
        import_faces(str(flat), str(tmp_path / "x"), test_only=True, test_classes=1, label_regex=r"^()",
                     show_progress=False)
    assert xclass(["train", "--config", "configs/face/cpu.yaml", f"data.path={tmp_path / 'out'}",
                   f"train.out_dir={tmp_path / 'run'}", "train.progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_classes is 0" in err[0] and json.load(open(tmp_path / "out" / "meta.json"))
