"""Shared pieces of the XMC heads: label-matrix checks, global gather with de-duplication,
label-text loading for the label tower, and the ``W`` gradient factor of the convention."""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import numpy as np
import torch

from xclass.parallel import collectives as C
from xclass.heads.base import IGNORE_INDEX
from xclass.heads.partition import to_local
from xclass.parallel.device import check_on_device


def check_labels(emb: torch.Tensor, labels: torch.Tensor, d: int, num_classes: int, who: str) -> torch.Tensor:
    """emb [B, d]; labels [B, K] (or [B]) int, IGNORE_INDEX-padded -> int64 [B, K]."""
    if emb.dim() != 2 or emb.shape[1] != d:
        raise ValueError(f"{who}: embeddings must be [B, {d}], got {tuple(emb.shape)}")
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2 or labels.shape[0] != emb.shape[0] or labels.is_floating_point():
        raise ValueError(f"{who}: labels must be an integer [B={emb.shape[0]}, K] tensor padded with "
                         f"{IGNORE_INDEX}, got {labels.dtype} {tuple(labels.shape)}")
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    msg = f"outside [0, {num_classes}) (pad with {IGNORE_INDEX})"
    check_on_device(~bad.any(), lambda: f"{who}: label {int(labels[bad][0])} {msg}", f"{who}: a label {msg}")
    return labels.to(torch.int64)


def gather_labels(labels: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    """[B_local, K_local] -> [B_global, K] replicated (K = max over ranks), duplicates in a
    row replaced by IGNORE_INDEX (each positive counts once)."""
    k = labels.shape[1]
    if C.world_size(group) > 1:  # ragged K over ranks: host integers, exchanged on the host
        k = max(C.gather_sizes(k, group))
    if k > labels.shape[1]:
        pad = torch.full((labels.shape[0], k - labels.shape[1]), IGNORE_INDEX, dtype=labels.dtype,
                         device=labels.device)
        labels = torch.cat([labels, pad], 1)
    g = C.all_gather_nograd(labels, group)
    s, _ = g.sort(1)
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    return torch.where(dup, torch.full_like(s, IGNORE_INDEX), s)


def local_positions(labels_g: torch.Tensor, start: int, stop: int,
                    cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, K] column of each positive among this rank's active columns, -1 elsewhere.
    ``cols``: sorted local label indices in use this step (None = all of [start, stop))."""
    pos = to_local(labels_g, start, stop)
    if cols is None:
        return pos
    at = torch.searchsorted(cols, pos.clamp(min=0))
    found = (pos >= 0) & (at < cols.numel()) & (cols[at.clamp(max=max(cols.numel() - 1, 0))] == pos)
    return torch.where(found, at, torch.full_like(pos, -1))


def vocab_size_of(meta: dict, where: str) -> int:
    v = (meta.get("inputs", {}).get("tokens", {}) or {}).get("vocab_size", meta.get("vocab_size"))
    if v is None:
        raise ValueError(f"{where}: meta.json has no inputs.tokens.vocab_size (needed by the label tower)")
    return int(v)


def read_label_features(data_path: str, start: int, stop: int) -> torch.Tensor:
    """Feature rows of labels [start, stop) from ``labels.parquet`` (label_id, features):
    float32 [stop - start, F]; every label must have a row."""
    import pyarrow.parquet as pq

    path = os.path.join(data_path, "labels.parquet")
    if not os.path.exists(path) or "features" not in pq.ParquetFile(path).schema_arrow.names:
        raise FileNotFoundError(f"{path}: no label 'features' column (label_repr features needs one; "
                                "see python -m xclass.cli.xmc embed-text)")
    t = pq.read_table(path, columns=["label_id", "features"])
    ids = t.column("label_id").to_numpy()
    col = t.column("features").combine_chunks()
    F_ = col.type.list_size
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, F_)
    keep = (ids >= start) & (ids < stop)
    out = np.zeros((stop - start, F_), np.float32)
    seen = np.zeros(stop - start, bool)
    out[ids[keep] - start], seen[ids[keep] - start] = x[keep], True
    if not seen.all():
        raise ValueError(f"{path}: label {start + int(np.flatnonzero(~seen)[0])} has no features row")
    return torch.from_numpy(out)


def read_label_tokens(data_path: str, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token bags of labels [start, stop) from ``labels.parquet`` (columns label_id, tokens):
    (values int64 [T], offsets int64 [stop - start + 1]); a label without a row gets an empty bag."""
    import pyarrow.parquet as pq

    path = os.path.join(data_path, "labels.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: label table not found (label_repr text needs label tokens)")
    t = pq.read_table(path, columns=["label_id", "tokens"])
    ids = t.column("label_id").to_numpy()
    keep = np.flatnonzero((ids >= start) & (ids < stop))
    keep = keep[np.argsort(ids[keep], kind="stable")]  # id order: bags concatenate in place
    ids_k = ids[keep]
    if len(ids_k) > 1 and np.any(ids_k[1:] == ids_k[:-1]):
        raise ValueError(f"{path}: label_id {int(ids_k[1:][ids_k[1:] == ids_k[:-1]][0])} appears twice")
    toks = t.column("tokens").combine_chunks().take(keep)
    lens = np.zeros(stop - start, np.int64)
    lens[ids_k - start] = np.diff(toks.offsets.to_numpy()) if len(keep) else 0
    values = toks.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    return torch.from_numpy(values), torch.from_numpy(offsets)
