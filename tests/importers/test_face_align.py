"""import faces geometry: 5-point similarity alignment (known transforms), crop boxes, grayscale,
and CSV errors naming the file and line."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xclass.data.schema import DataError
from xclass.importers import ImportError_
from xclass.importers.face_align import ARCFACE_TEMPLATE, align_5points, umeyama
from xclass.importers.faces import import_faces


def _similarity(angle_deg, scale, tx, ty):
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.c_[r, [tx, ty]]


def _apply(m, p):
    return p @ m[:, :2].T + m[:, 2]


def test_umeyama_recovers_known_similarity():
    m = _similarity(23.0, 1.7, 31.0, -4.0)
    src = np.random.default_rng(0).normal(size=(5, 2)) * 30
    np.testing.assert_allclose(umeyama(src, _apply(m, src)), m, atol=1e-9)
    # a reflection is not a similarity: the best proper rotation is returned (det > 0)
    mirrored = src * [-1, 1]
    assert np.linalg.det(umeyama(src, mirrored)[:, :2]) > 0


def _pattern(x, y):
    return 127 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)


def _warped_face(m, shape=(300, 300)):
    """Image whose pixel centre (X, Y) shows the template-frame pattern at m^-1 (X, Y)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])[:2]
    pts = _apply(inv, np.c_[xs.ravel(), ys.ravel()])
    return np.clip(_pattern(pts[:, 0], pts[:, 1]), 0, 255).reshape(shape).astype(np.uint8)


@pytest.mark.parametrize("size", [112, 56])
def test_alignment_undoes_a_known_similarity(size):
    m = _similarity(-17.0, 1.4, 40.0, 30.0)
    img = Image.fromarray(_warped_face(m))
    lmk = _apply(m, ARCFACE_TEMPLATE)                       # where the template points are in the image
    out = np.asarray(align_5points(img, lmk, size), np.float64)
    ys, xs = np.mgrid[0:size, 0:size] * (112.0 / size)      # output pixel centre in template coordinates
    want = _pattern(xs, ys)
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(out[inner] - want[inner]).mean() < 2.5
    # a one-pixel error in the convention would show as a clearly larger error
    shifted = _pattern(xs + 112.0 / size, ys)
    assert np.abs(out[inner] - shifted[inner]).mean() > 3 * np.abs(out[inner] - want[inner]).mean()


def _tree(root, m):
    for pid in ("a", "b"):
        (root / pid).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(_warped_face(m)).convert("RGB").save(root / pid / f"{j}.png")


def test_import_with_landmarks_and_grayscale(tmp_path):
    m = _similarity(10.0, 1.2, 50.0, 40.0)
    _tree(tmp_path / "f", m)
    lmk = _apply(m, ARCFACE_TEMPLATE).ravel()
    rows = ["file," + ",".join(f"{c}{i}" for i in range(1, 6) for c in "xy")]
    rows += [f"{p}/{j}.png," + ",".join(f"{v:.4f}" for v in lmk) for p in ("a", "b") for j in range(2)]
    (tmp_path / "lmk.csv").write_text("\n".join(rows) + "\n")
    meta = import_faces(str(tmp_path / "f"), str(tmp_path / "out"), size=32, grayscale=True,
                        landmarks_csv=str(tmp_path / "lmk.csv"), show_progress=False)
    assert meta["inputs"]["image"]["channels"] == 1 and meta["inputs"]["image"]["alignment"] == "arcface-5point"
    img = np.asarray(pq.read_table(tmp_path / "out" / "train.parquet").column("image")[0].as_py(), np.float64)
    assert img.shape == (32 * 32,)
    ys, xs = np.mgrid[0:32, 0:32] * (112.0 / 32)
    assert np.abs(img.reshape(32, 32)[3:-3, 3:-3] - _pattern(xs, ys)[3:-3, 3:-3]).mean() < 4
    from xclass.data.validate import validate_file

    validate_file(str(tmp_path / "out" / "train.parquet"), "face", 2, image_shape=(32, 32, 1))
    # a missing row and a bad line are named
    (tmp_path / "lmk2.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ImportError_, match=r"b/1\.png: no landmarks in .*lmk2\.csv"):
        import_faces(str(tmp_path / "f"), str(tmp_path / "o2"), size=32, landmarks_csv=str(tmp_path / "lmk2.csv"),
                     show_progress=False)
    (tmp_path / "lmk3.csv").write_text(rows[0] + "\na/0.png,1,2,3\n")
    with pytest.raises(ImportError_, match=r"lmk3\.csv: line 2: expected a file name and 10 numbers"):
        import_faces(str(tmp_path / "f"), str(tmp_path / "o3"), size=32, landmarks_csv=str(tmp_path / "lmk3.csv"),
                     show_progress=False)
    (tmp_path / "lmk4.csv").write_bytes(rows[0].encode() + b"\na/0.png,1,2,3,4,5,6,7,8,9,1\xb5\n")
    with pytest.raises(DataError, match=r"lmk4\.csv: line 2: not UTF-8 text"):
        import_faces(str(tmp_path / "f"), str(tmp_path / "o4"), size=32, landmarks_csv=str(tmp_path / "lmk4.csv"),
                     show_progress=False)
    assert not any((tmp_path / o).exists() for o in ("o2", "o3", "o4"))


def test_crop_box_and_boxes_csv(tmp_path):
    for pid in ("a", "b"):
        (tmp_path / "f" / pid).mkdir(parents=True)
        for j in range(2):
            arr = np.zeros((60, 80, 3), np.uint8)
            arr[10:30, 40:60] = (200, 100, 50)                 # the "face": x 40..59, y 10..29
            Image.fromarray(arr).save(tmp_path / "f" / pid / f"{j}.png")
    import_faces(str(tmp_path / "f"), str(tmp_path / "o"), size=10, crop_box="40,10,60,30", show_progress=False)
    img = np.asarray(pq.read_table(tmp_path / "o" / "train.parquet").column("image")[0].as_py()).reshape(10, 10, 3)
    assert (img == (200, 100, 50)).all()
    # per-image boxes (non-square box widened to a square about its centre: x 40..60, y 10..30)
    lines = ["file,x0,y0,x1,y1"] + [f"{p}/{j}.png,45,10,55,30" for p in "ab" for j in range(2)]
    (tmp_path / "boxes.csv").write_text("\n".join(lines))
    import_faces(str(tmp_path / "f"), str(tmp_path / "o2"), size=10, boxes_csv=str(tmp_path / "boxes.csv"),
                 show_progress=False)
    img2 = np.asarray(pq.read_table(tmp_path / "o2" / "train.parquet").column("image")[0].as_py()).reshape(10, 10, 3)
    assert (img2 == img).all()
    with pytest.raises(ImportError_, match="--crop-box"):
        import_faces(str(tmp_path / "f"), str(tmp_path / "o3"), size=10, crop_box="5,5,1,1", show_progress=False)
