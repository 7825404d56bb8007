"""Evaluate a trained XMC run through xclass's export + eval API (the same steps as
``xclass export-index --run RUN --head`` / ``--split test`` then ``xclass evaluate --protocol xmc``).

Metric of the label index: ``cosine`` for dual_decoupled with ``normalize`` (its training score),
``ip`` for ova (its classifier score up to the shared bias) or an unnormalised dual head."""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import xclass.heads.xmc  # noqa: F401  (registers the XMC heads before export builds them)
from xclass import components
from xclass.eval import evaluate as ev
from xclass.eval.export import export_index
from xclass.eval.index import IndexSpec
from xclass.eval.io import read_table, write_parquet_atomic
from xclass.eval.metrics import inverse_propensity
from xclass.eval.searcher import ShardedIndex
from xclass.eval.embed import export_head, load_encoder, load_run
from xclass.data.meta import load_meta


def _offsets(arr):
    off = arr.offsets.to_numpy().astype(np.int64)
    return arr.flatten().to_numpy(zero_copy_only=False), off - off[0]


def embed_xmc_split(run_dir: str, data: str, split: str, out_path: str, batch_rows: int = 1024) -> str:
    """``id``, ``labels`` (list) and ``embedding`` of every row of an XMC split, encoded by the
    run's encoder (xclass.eval.embed.embed_split writes multi-label rows as one flat column)."""
    cfg = load_run(run_dir)
    meta = load_meta(data)
    enc = load_encoder(run_dir, cfg, meta)
    decode = components.make_decoder("xmc", meta, cfg.model)
    f = pq.ParquetFile(os.path.join(data, f"{split}.parquet"))
    cols = components.input_columns("xmc", cfg.model.encoder, meta)[1:]  # labels, tokens[, token_weights]
    embs, tables = [], []
    with torch.no_grad():
        for rb in f.iter_batches(batch_rows, columns=["id"] + cols):
            batch = {"id": rb.column(0).to_numpy()}
            if "text" in cols:
                batch["text"] = rb.column("text").to_numpy(zero_copy_only=False)
            for name in [c for c in cols if c != "text"]:
                col = rb.column(name)
                if isinstance(col, pa.FixedSizeListArray):  # features [n, F]
                    batch[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
                else:
                    batch[name], batch[name + "_offsets"] = _offsets(col)
            inputs, _ = decode(batch)
            embs.append(enc(inputs).float().numpy())
            tables.append(pa.table({"id": rb.column(0), "labels": rb.column(1)}))
    emb = np.concatenate(embs)
    t = pa.concat_tables(tables).append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]))
    write_parquet_atomic(t, out_path)
    return out_path


def train_propensity(path: str, n_labels: int, a: float, b: float) -> np.ndarray:
    """Inverse propensities [n_labels] from a training split's ``labels`` (no embeddings needed)."""
    lab = read_table(path, columns=["labels"]).column("labels").combine_chunks()
    flat = lab.flatten().to_numpy()
    return inverse_propensity(np.bincount(flat, minlength=n_labels), len(lab), a, b)


def run_metric(run_dir: str) -> str:
    cfg = load_run(run_dir)
    p = dict(cfg.head.params or {})
    if cfg.head.name == "dual_decoupled":
        return "cosine" if p.get("normalize", True) else "ip"
    if cfg.head.name == "ova":
        return "cosine" if p.get("normalize", False) else "ip"
    return "cosine"


def evaluate_run(run_dir: str, work: str, ks: Sequence[int] = (1, 3, 5), a: float = 0.55, b: float = 1.5,
                 data_path: Optional[str] = None, progress: bool = False, label_counts: Optional[str] = None,
                 n_train: Optional[int] = None) -> Dict[str, float]:
    """Export the label index and the test embeddings of ``run_dir`` under ``work``; XMC metrics
    (fractions). Rankings go to ``work/rankings.parquet``; PSP uses ``label_counts`` (file) /
    ``n_train`` when given, else the train split's label counts and rows."""
    cfg = load_run(run_dir)
    data = data_path or cfg.data.path
    spec = IndexSpec(kind="flat", metric=run_metric(run_dir))
    labels = export_head(run_dir, os.path.join(work, "label_embeddings"))
    export_index(labels, os.path.join(work, "label_index"), spec, overwrite=True)
    queries = embed_xmc_split(run_dir, data, "test", os.path.join(work, "test_embeddings.parquet"))
    index = ShardedIndex.open(os.path.join(work, "label_index"))
    n_labels = max(sh["id_max"] for sh in index.manifest["shards"]) + 1
    inv = ev.xmc_propensity(n_labels, os.path.join(data, "train.parquet"), label_counts, n_train, a, b)
    out = ev.evaluate_xmc(index, queries, ks, inv_prop=inv, progress=progress,
                          rankings_out=os.path.join(work, "rankings.parquet"))
    out["metric"] = spec.metric
    return out
