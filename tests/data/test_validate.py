"""validate_file: every error path names file, global row and column; good files pass."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.data import DataError, validate_file
from xclass.data.schema import META_KEY

RG = 4  # small row groups: errors in later groups must report *global* row indices


def write(tmp_path, cols, meta=None, name="f.parquet"):
    t = pa.table(cols)
    if meta is not None:
        t = t.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    p = str(tmp_path / name)
    pq.write_table(t, p, row_group_size=RG)
    return p


def fixed(x, t):
    x = np.asarray(x)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), t), x.shape[1])


def face_cols(n=10, label=None, image=None):
    return {"id": pa.array(np.arange(n), pa.int64()),
            "label": pa.array(np.arange(n) % 3 if label is None else label, pa.int64()),
            "image": fixed(np.zeros((n, 12), np.uint8) if image is None else image, pa.uint8())}


FACE_META = {"task": "face", "height": 2, "width": 2, "channels": 3}


def xmc_cols(labels, tokens=None):
    n = len(labels)
    tokens = tokens if tokens is not None else [[1, 2]] * n
    return {"id": pa.array(np.arange(n), pa.int64()), "labels": pa.array(labels, pa.list_(pa.int64())),
            "tokens": pa.array(tokens, pa.list_(pa.int32()))}


def expect(path, row, column, match, **kw):
    with pytest.raises(DataError, match=match) as ei:
        validate_file(path, **kw)
    err = ei.value
    assert (err.file, err.row, err.column) == (path, row, column), str(err)
    assert path in str(err)


def test_good_face_file_passes(tmp_path):
    p = write(tmp_path, face_cols(), FACE_META)
    info = validate_file(p, "face", 3)
    assert info["num_rows"] == 10 and (info["label_min"], info["label_max"]) == (0, 2)


def test_missing_column(tmp_path):
    cols = face_cols()
    del cols["label"]
    expect(write(tmp_path, cols, FACE_META), None, "label", "missing required column", task="face", num_classes=3)


def test_missing_input_group(tmp_path):
    cols = {"id": pa.array(np.arange(5)), "label": pa.array(np.zeros(5, np.int64)),
            "fbank": pa.array([[0.0]] * 5, pa.list_(pa.float32()))}
    expect(write(tmp_path, cols), None, "num_frames", "missing input column", task="speaker", num_classes=3)


def test_wrong_type(tmp_path):
    cols = face_cols()
    cols["label"] = pa.array(np.arange(10, dtype=np.float64))
    expect(write(tmp_path, cols, FACE_META), None, "label", "has type double", task="face", num_classes=10)


def test_wrong_list_value_type(tmp_path):
    cols = xmc_cols([[1]] * 5)
    cols["tokens"] = pa.array([[1.5]] * 5, pa.list_(pa.float32()))
    expect(write(tmp_path, cols), None, "tokens", "expected list<int>", task="xmc", num_classes=4)


def test_label_out_of_range_reports_global_row(tmp_path):
    lab = np.zeros(10, np.int64)
    lab[9] = 3  # in the third row group
    expect(write(tmp_path, face_cols(label=lab), FACE_META), 9, "label", r"value 3 out of range \[0, 3\)",
           task="face", num_classes=3)
    lab[6] = -1
    expect(write(tmp_path, face_cols(label=lab), FACE_META, "g.parquet"), 6, "label", "out of range",
           task="face", num_classes=3)


def test_xmc_label_out_of_range_maps_value_to_row(tmp_path):
    labels = [[0, 1], [2], [1, 3, 0], [0], [1], [2, 2, 9]]
    expect(write(tmp_path, xmc_cols(labels)), 5, "labels", "value 9", task="xmc", num_classes=4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path, bad):
    n = 9
    feats = np.ones((n, 3), np.float32)
    feats[7, 2] = bad
    cols = {"id": pa.array(np.arange(n)), "label": pa.array(np.zeros(n, np.int64)),
            "features": fixed(feats, pa.float32())}
    expect(write(tmp_path, cols), 7, "features", "non-finite", task="quic", num_classes=1)


def test_non_finite_in_ragged_fbank(tmp_path):
    frames = np.array([1, 2, 3, 1, 2, 2])
    rows = [np.zeros(f * 2, np.float32) for f in frames]
    rows[4][3] = np.nan
    cols = {"id": pa.array(np.arange(6)), "label": pa.array(np.zeros(6, np.int64)),
            "fbank": pa.array(rows, pa.list_(pa.float32())), "num_frames": pa.array(frames, pa.int32())}
    expect(write(tmp_path, cols, {"task": "speaker", "n_mels": 2}), 4, "fbank", "non-finite",
           task="speaker", num_classes=1)


def test_fbank_length_mismatch(tmp_path):
    frames = np.array([1, 2, 3, 1, 2])
    rows = [np.zeros(f * 2, np.float32) for f in frames]
    rows[3] = np.zeros(5, np.float32)
    cols = {"id": pa.array(np.arange(5)), "label": pa.array(np.zeros(5, np.int64)),
            "fbank": pa.array(rows, pa.list_(pa.float32())), "num_frames": pa.array(frames, pa.int32())}
    expect(write(tmp_path, cols, {"task": "speaker", "n_mels": 2}), 3, "fbank", "expected num_frames",
           task="speaker", num_classes=1)


def test_empty_label_list(tmp_path):
    p = write(tmp_path, xmc_cols([[0], [1], [0, 1], [1], [2], []]))
    expect(p, 5, "labels", "empty label list", task="xmc", num_classes=3)
    assert validate_file(p, "xmc", 3, allow_empty_labels=True)["num_rows"] == 6


def test_tokens_out_of_vocab(tmp_path):
    p = write(tmp_path, xmc_cols([[0]] * 6, [[1], [2], [3], [4], [5], [1, 50]]), {"vocab_size": 50})
    expect(p, 5, "tokens", r"out of range \[0, 50\)", task="xmc", num_classes=1)


def test_empty_file(tmp_path):
    cols = face_cols(0, label=np.zeros(0, np.int64), image=np.zeros((0, 12), np.uint8))
    expect(write(tmp_path, cols, FACE_META), None, None, "no rows", task="face", num_classes=3)


def test_null_value(tmp_path):
    cols = face_cols()
    cols["label"] = pa.array([0, 1, 2, 0, 1, None, 0, 1, 2, 0], pa.int64())
    expect(write(tmp_path, cols, FACE_META), 5, "label", "null", task="face", num_classes=3)


def test_image_shape_mismatch_and_missing_shape(tmp_path):
    p = write(tmp_path, face_cols(), {"height": 2, "width": 3, "channels": 3})
    expect(p, None, "image", "image list size 12", task="face", num_classes=3)
    q = write(tmp_path, face_cols(), None, "nometa.parquet")
    expect(q, None, "image", "needs height/width/channels", task="face", num_classes=3)
    assert validate_file(q, "face", 3, image_shape=(2, 2, 3))["num_rows"] == 10


def test_not_parquet(tmp_path):
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    expect(str(p), None, None, "not a readable Parquet file", task="face", num_classes=3)


def test_binary_images_accepted(tmp_path):
    cols = face_cols()
    cols["image"] = pa.array([b"\x89PNG..."] * 10, pa.binary())
    assert validate_file(write(tmp_path, cols), "face", 3)["num_rows"] == 10
