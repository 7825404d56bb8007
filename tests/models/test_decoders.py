"""Decoders on hand-built reader batches against hand-computed tensors."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xclass.data.reader import ParquetReader
from xclass.data.schema import DataError
from xclass.models import DECODERS, IGNORE, decode_batch, input_columns, pad_ragged
from tests.models.fakes import fake_batch, meta_for

I64 = np.int64


def test_pad_ragged_by_hand():
    vals = np.array([1, 2, 3, 4, 5, 6])
    out, lengths = pad_ragged(vals, np.array([0, 2, 2, 6]), pad=-1)
    np.testing.assert_array_equal(out, [[1, 2, -1, -1], [-1, -1, -1, -1], [3, 4, 5, 6]])
    np.testing.assert_array_equal(lengths, [2, 0, 4])
    out, lengths = pad_ragged(vals, np.array([0, 2, 2, 6]), pad=0, width=3)
    np.testing.assert_array_equal(out, [[1, 2, 0], [0, 0, 0], [3, 4, 5]])
    np.testing.assert_array_equal(lengths, [2, 0, 3])
    out, lengths = pad_ragged(np.zeros(0), np.array([0]))
    assert out.shape == (0, 0) and lengths.shape == (0,)


def test_face_hwc_bytes_to_nchw():
    meta = {"height": 2, "width": 2, "channels": 3}
    img = np.arange(24, dtype=np.uint8).reshape(2, 12)        # 2 images, HWC order
    inputs, labels = decode_batch("face", {"image": img, "label": np.array([5, 1])}, meta)
    x = inputs["image"]
    assert x.shape == (2, 3, 2, 2) and x.dtype == torch.uint8
    # image 1, channel 2, row 1, col 0: byte 12 + (1*2 + 0)*3 + 2 = 20
    assert x[1, 2, 1, 0] == 20 and x[0, 0, 0, 1] == 3
    assert labels.tolist() == [5, 1] and labels.dtype == torch.int64


def test_face_wrong_size_is_an_error():
    with pytest.raises(DataError, match="image"):
        decode_batch("face", {"image": np.zeros((1, 11), np.uint8)},
                     {"height": 2, "width": 2, "channels": 3})


def test_speaker_pads_frames():
    meta = {"n_mels": 2}
    batch = {"fbank": np.array([1, 2, 3, 4, 5, 6], np.float32),
             "fbank_offsets": np.array([0, 2, 6], I64), "num_frames": np.array([1, 2], np.int32),
             "label": np.array([3, 0])}
    inputs, labels = decode_batch("speaker", batch, meta)
    expected = torch.tensor([[[1, 2], [0, 0]], [[3, 4], [5, 6]]], dtype=torch.float32)
    assert torch.equal(inputs["fbank"], expected)
    assert inputs["lengths"].tolist() == [1, 2] and labels.tolist() == [3, 0]


def test_speaker_frame_count_mismatch_names_the_row():
    batch = {"fbank": np.zeros(6, np.float32), "fbank_offsets": np.array([0, 2, 6], I64),
             "num_frames": np.array([1, 3], np.int32)}
    with pytest.raises(DataError, match=r"row 1.*'fbank'"):
        decode_batch("speaker", batch, {"n_mels": 2})


def test_quic_columns_and_clipped_lengths():
    batch = {"pkt_sizes": np.array([[100, 200, 0], [1500, 0, 0]], np.int32),
             "pkt_dirs": np.array([[1, -1, 0], [-1, 0, 0]], np.int8),
             "pkt_iat": np.array([[0, 5.5, 0], [0, 0, 0]], np.float32),
             "num_packets": np.array([2, 40]), "flow_stats": np.ones((2, 8), np.float32),
             "label": np.array([1, 2])}
    inputs, labels = decode_batch("quic", batch, {})
    assert inputs["pkt_sizes"].dtype == torch.float32
    assert inputs["pkt_sizes"][1, 0] == 1500 and inputs["pkt_dirs"][0, 1] == -1
    assert inputs["pkt_iat"][0, 1] == 5.5
    assert inputs["lengths"].tolist() == [2, 3]                # 40 packets, only 3 kept
    assert inputs["flow_stats"].shape == (2, 8) and labels.tolist() == [1, 2]


def test_xmc_tokens_and_padded_labels():
    batch = {"tokens": np.array([4, 9, 7], np.int32), "tokens_offsets": np.array([0, 2, 3], I64),
             "labels": np.array([6, 1, 4, 1]), "labels_offsets": np.array([0, 1, 4], I64)}
    inputs, labels = decode_batch("xmc", batch, {"vocab_size": 10})
    assert inputs["tokens"].tolist() == [[4, 9], [7, 0]]
    assert inputs["lengths"].tolist() == [2, 1] and inputs["tokens"].dtype == torch.int64
    assert labels.tolist() == [[6, IGNORE, IGNORE], [1, 4, 1]]
    assert inputs["num_labels"].tolist() == [1, 3]


def test_xmc_token_out_of_vocab_names_the_row():
    batch = {"tokens": np.array([4, 9, 10]), "tokens_offsets": np.array([0, 2, 3], I64)}
    with pytest.raises(DataError, match=r"row 1.*'tokens'"):
        decode_batch("xmc", batch, {"vocab_size": 10})


def test_xmc_label_table():
    batch = {"label_id": np.array([0, 1]), "tokens": np.array([3, 3, 2]),
             "tokens_offsets": np.array([0, 1, 3], I64)}
    inputs, labels = decode_batch("xmc_labels", batch, {"vocab_size": 5})
    assert inputs["tokens"].tolist() == [[3, 0], [3, 2]] and labels.tolist() == [0, 1]


def test_features_and_missing_inputs():
    f = np.arange(6, dtype=np.float64).reshape(2, 3)
    inputs, labels = decode_batch("face", {"features": f, "label": np.array([0, 1])}, {})
    assert inputs["features"].dtype == torch.float32 and inputs["features"][1, 2] == 5
    with pytest.raises(DataError, match="no input columns"):
        decode_batch("quic", {"label": np.array([0])}, {})


@pytest.mark.parametrize("task", DECODERS.names())
def test_empty_batch(task):
    t = "xmc" if task == "xmc_labels" else task
    full = fake_batch(t, rows=(0, 1))
    empty = {k: (v[:1] if k.endswith("_offsets") else v[:0]) for k, v in full.items()}
    if task == "xmc_labels":
        empty = {"label_id": np.zeros(0, I64), "tokens": empty["tokens"],
                 "tokens_offsets": empty["tokens_offsets"]}
    inputs, labels = decode_batch(task, empty, meta_for(t))
    assert all(v.shape[0] == 0 for v in inputs.values()) and labels.shape[0] == 0


def test_reader_layout_round_trip(tmp_path):
    """A real Parquet file read by ParquetReader decodes to the values written."""
    table = pa.table({
        "labels": pa.array([[2], [0, 1]], pa.list_(pa.int64())),
        "tokens": pa.array([[1, 2, 3], [4]], pa.list_(pa.int32())),
    })
    pq.write_table(table, tmp_path / "x.parquet")
    cols = input_columns("xmc", "embbag")
    assert cols == ["labels", "tokens"]
    reader = ParquetReader(str(tmp_path / "x.parquet"), cols, batch_rows=2, shuffle=False)
    inputs, labels = decode_batch("xmc", next(iter(reader)), {"vocab_size": 5})
    assert inputs["tokens"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert labels.tolist() == [[2, IGNORE], [0, 1]]


def test_input_columns():
    assert input_columns("speaker", "ecapa") == ["label", "fbank", "num_frames"]
    assert input_columns("face", "mlp") == ["label", "features"]
    assert input_columns("xmc_labels", "embbag", with_labels=False) == ["tokens"]


def test_face_png_bytes_round_trip():
    """A binary (PNG) image column decodes to the same pixels (PNG is lossless), NCHW."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    blobs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    batch = {"id": np.arange(3), "label": np.arange(3), "image": np.array(blobs, dtype=object)}
    x, _ = DECODERS.get("face")(batch, {"height": 4, "width": 5, "channels": 3})
    np.testing.assert_array_equal(x["image"].permute(0, 2, 3, 1).numpy(), imgs)


def test_quic_reads_the_port_columns_only_when_meta_lists_them():
    base = ["label", "pkt_sizes", "pkt_dirs", "pkt_iat", "num_packets", "flow_stats"]
    assert input_columns("quic", "flowcnn") == base
    assert input_columns("quic", "flowcnn", meta={"inputs": {"ports": {}}}) == base + ["server_port", "ip_proto"]
    assert input_columns("quic", "mlp", meta={"inputs": {"ports": {}}}) == ["label", "features"]
