"""Issue items 4-6: bad training data stops ``xclass train`` before step 1 with one line naming
file, row and column (exit 2), whether or not the bad row would have been drawn."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.common import TINY, assert_one_line, cli
from tests.train.common import write_features_data


def _rewrite(data, change):
    path = os.path.join(data, "train.parquet")
    cols = pq.read_table(path).to_pydict()
    change(cols)
    feats = np.asarray(cols.pop("features"), dtype=np.float32).reshape(-1, 12)
    label_type = pa.string() if cols["label"] and isinstance(cols["label"][0], str) else pa.int64()
    t = pa.table({"id": pa.array(cols["id"], pa.int64()), "label": pa.array(cols["label"], label_type),
                  "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1])})
    pq.write_table(t, path, row_group_size=64)
    return path


def _set(col, row, value):
    def change(cols):
        cols[col][row] = value
    return change


def _truncate(n):
    def change(cols):
        for k in cols:
            cols[k] = cols[k][:n]
    return change


CASES = {
    "nan_feature": (_set("features", 301, [float("nan")] * 12), ["row 301", "'features'", "non-finite"]),
    "inf_feature": (_set("features", 7, [float("inf")] * 12), ["row 7", "'features'"]),
    "label_too_big": (_set("label", 350, 24), ["row 350", "'label'", "out of range"]),
    "label_negative": (_set("label", 3, -1), ["row 3", "'label'"]),
    "label_null": (_set("label", 200, None), ["row 200", "'label'", "null"]),
    "duplicate_id": (_set("id", 380, 5), ["row 380", "'id'", "duplicate id 5"]),
    "empty_split": (_truncate(0), ["no rows"]),
    "smaller_than_batch": (_truncate(10), ["10 rows", "data.batch_size=24"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_data_is_one_line(tmp_path, capfd, case):
    data = write_features_data(str(tmp_path / "d"))
    change, needles = CASES[case]
    path = _rewrite(data, change)
    run = str(tmp_path / "run")
    rc, err = cli(["train", f"data.path={data}", f"train.out_dir={run}", "train.max_steps=3", *TINY], capfd)
    line = assert_one_line(rc, err, *needles)
    if case not in ("smaller_than_batch",):
        assert path in line
    assert not os.path.isdir(os.path.join(run, "checkpoints")), "a checkpoint was written"


def test_string_labels_refused(tmp_path, capfd):
    data = write_features_data(str(tmp_path / "d"))
    _rewrite(data, lambda cols: cols.update(label=[str(v) for v in cols["label"]]))
    rc, err = cli(["train", f"data.path={data}", f"train.out_dir={tmp_path / 'run'}", *TINY], capfd)
    assert_one_line(rc, err, "'label'", "type")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"task": "face"}', '{"num_classes": "many"}'])
def test_corrupt_meta_json(tmp_path, capfd, text):
    data = write_features_data(str(tmp_path / "d"))
    with open(os.path.join(data, "meta.json"), "w") as f:
        f.write(text)
    rc, err = cli(["train", f"data.path={data}", f"train.out_dir={tmp_path / 'run'}", *TINY], capfd)
    assert_one_line(rc, err, "meta.json")


def test_corrupt_parquet_pages(tmp_path, capfd):
    data = write_features_data(str(tmp_path / "d"))
    path = os.path.join(data, "train.parquet")
    raw = bytearray(open(path, "rb").read())
    mid = len(raw) // 2
    raw[mid:mid + 64] = b"\xff" * 64
    open(path, "wb").write(bytes(raw))
    rc, err = cli(["train", f"data.path={data}", f"train.out_dir={tmp_path / 'run'}", *TINY], capfd)
    assert_one_line(rc, err, "train.parquet")
    json.dumps(err)


def _embeddings_with_a_damaged_page(path: str) -> None:
    """An embedding file whose footer reads fine and whose 'embedding' data page does not."""
    e = np.random.default_rng(0).standard_normal((500, 8)).astype("float32")
    pq.write_table(pa.table({"id": np.arange(500), "label": np.arange(500) % 7,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 8)}), path)
    page = pq.ParquetFile(path).metadata.row_group(0).column(2).data_page_offset
    raw = bytearray(open(path, "rb").read())
    raw[page + 100:page + 164] = b"\xff" * 64
    open(path, "wb").write(bytes(raw))


def test_evaluate_damaged_embedding_page(tmp_path, capfd):
    path = str(tmp_path / "emb.parquet")
    _embeddings_with_a_damaged_page(path)
    pairs = str(tmp_path / "pairs.parquet")
    pq.write_table(pa.table({"a": [0, 1], "b": [2, 3], "same": [True, False]}), pairs)
    rc, err = cli(["evaluate", "--protocol", "face", "--embeddings", path, "--pairs", pairs,
                   "--out", str(tmp_path / "r")], capfd)
    assert_one_line(rc, err, "emb.parquet: cannot read the Parquet data after row 0")
    assert not os.path.exists(tmp_path / "r")


def test_split_gallery_damaged_page(tmp_path, capfd):
    path = str(tmp_path / "emb.parquet")
    _embeddings_with_a_damaged_page(path)
    rc, err = cli(["split-gallery", "--input", path, "--out", str(tmp_path / "s")], capfd)
    assert_one_line(rc, err, "emb.parquet: cannot read the Parquet file")
    assert not os.path.exists(tmp_path / "s")
