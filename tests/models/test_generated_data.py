"""The data package's generators -> ParquetReader -> decode_batch -> default encoders."""
from __future__ import annotations

import pytest
import torch

from xclass.config import ModelConfig
from xclass.data.generate import make_data
from xclass.data.reader import ParquetReader
from xclass.models import DEFAULT_ENCODER, build_encoder, decode_batch, input_columns

SMALL = {
    "face": dict(image_size=16),
    "speaker": dict(n_mels=16, min_frames=8, max_frames=30),
    "quic": dict(num_packets=12, min_packets=3),
    "xmc": dict(vocab_size=300, num_rows=40, num_test_rows=8),
}


@pytest.mark.parametrize("task", sorted(DEFAULT_ENCODER))
def test_generated_split_decodes_and_encodes(task, tmp_path):
    kw = dict(SMALL[task])
    if task != "xmc":
        kw.update(rows_per_class=3)
    meta = make_data(task, str(tmp_path / task), num_classes=5, progress=False, **kw)
    name = DEFAULT_ENCODER[task]
    files = sorted((tmp_path / task).glob("train*"))
    reader = ParquetReader([str(f) for f in files], input_columns(task, name), batch_rows=8,
                           shuffle=False)
    inputs, labels = decode_batch(task, next(iter(reader)), meta)
    assert labels.shape[0] == 8 and int(labels.max()) < 5
    if "lengths" in inputs:
        assert int(inputs["lengths"].min()) >= 1
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(encoder=name, embedding_dim=16), meta)
    emb = enc(inputs)
    assert emb.shape == (8, 16) and torch.isfinite(emb).all()
    if task == "xmc":
        table = ParquetReader(str(tmp_path / task / "labels.parquet"),
                              input_columns("xmc_labels", name), batch_rows=5, shuffle=False)
        lab_inputs, ids = decode_batch("xmc_labels", next(iter(table)), meta)
        assert ids.tolist() == [0, 1, 2, 3, 4]
        assert enc(lab_inputs).shape == (5, 16)
