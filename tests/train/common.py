"""A small class-conditional `features` dataset for loop tests (no convolutions: fast, and an
encoder without BatchNorm makes W ranks exactly equal to one process)."""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.config import RunConfig, load_config
from xclass.train.report import read_metrics


def write_features_data(out: str, num_classes: int = 24, rows_per_class: int = 16, dim: int = 12,
                        seed: int = 0, row_group_rows: int = 64) -> str:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim)).astype(np.float32)
    labels = np.repeat(np.arange(num_classes), rows_per_class)
    rng.shuffle(labels)
    x = centers[labels] + 0.5 * rng.normal(size=(len(labels), dim)).astype(np.float32)
    os.makedirs(out, exist_ok=True)
    for split, sl in (("train", slice(None)), ("test", slice(0, 4 * num_classes))):
        t = pa.table({"id": np.arange(len(labels))[sl].astype(np.int64), "label": labels[sl].astype(np.int64),
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(x[sl].reshape(-1)), dim)})
        pq.write_table(t, os.path.join(out, f"{split}.parquet"), row_group_size=row_group_rows)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"task": "face", "num_classes": num_classes,
                   "inputs": {"features": {"feature_dim": dim}}}, f)
    return out


def features_config(data: str, out: str, *extra: str) -> RunConfig:
    return load_config(None, [
        f"data.path={data}", "data.batch_size=24", "data.shard_mode=global_batch",
        "model.encoder=mlp", "model.embedding_dim=8", "model.params={hidden: []}",
        "head.margin=cosface", "head.margin_params={s: 8.0, m: 0.2}",
        "optim.lr=0.1", "optim.schedule=cosine", "train.max_steps=6", "train.log_every=1",
        f"train.out_dir={out}", "train.progress=false", *extra])


def losses(run_dir: str) -> List[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
