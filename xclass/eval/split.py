"""``xclass split-gallery``: split a labelled Parquet (an embedding file from ``export-index``
or a dataset split) into ``gallery.parquet`` and ``queries.parquet`` for identification.

Rule, per class: ``--gallery-query FILE`` (a dataset's ``gallery_query.parquet``: ``id``,
``is_query``) decides when given; otherwise a seeded permutation of each class's rows puts
``max(1, n - round(query_fraction * n))`` rows in the gallery and the rest in the queries, so
every class with a query also has a gallery row and the split does not depend on file order
beyond the rows' ids (rows are ordered by id before the permutation).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional

import numpy as np
import pyarrow as pa

from xclass.data.schema import DataError
from xclass.errors import one_line
from xclass.eval.io import read_table, write_parquet_atomic


def query_mask(ids: np.ndarray, labels: np.ndarray, query_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """bool [n]: True = query. Stratified by label, seeded; classes of one row stay in the gallery."""
    if not 0.0 <= query_fraction < 1.0:
        raise ValueError(f"query fraction must be in [0, 1), got {query_fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(ids), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(ids[idx], kind="stable")]
        n_gallery = max(1, len(idx) - int(round(query_fraction * len(idx))))
        mask[idx[rng.permutation(len(idx))[n_gallery:]]] = True
    return mask


def first_half_mask(labels: np.ndarray) -> np.ndarray:
    """bool [n]: True = query. Per class, the first half of its rows in file order (rounded down)
    is the gallery and the rest are queries: the deterministic split of ``xclass demo``."""
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(labels[order])) + 1]
    counts = np.diff(np.r_[starts, len(labels)])
    rank[order] = np.arange(len(labels)) - np.repeat(starts, counts)
    return rank >= np.repeat(counts, counts)[np.argsort(order)] // 2


def _mask_from_file(path: str, ids: np.ndarray, emb_path: str) -> np.ndarray:
    gq = read_table(path)
    for col in ("id", "is_query"):
        if col not in gq.column_names:
            raise DataError(f"missing column {col!r} (has {gq.column_names})", file=path, column=col)
    is_q = dict(zip(gq.column("id").to_pylist(), gq.column("is_query").to_pylist()))
    missing = np.flatnonzero([i not in is_q for i in ids.tolist()])
    if len(missing):
        raise DataError(f"id {int(ids[missing[0]])} is not in {path}", file=emb_path, row=int(missing[0]),
                        column="id")
    return np.array([bool(is_q[i]) for i in ids.tolist()])


def unenrolled(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """bool [n]: the rows of ``k`` seeded classes, to become queries with no gallery row (open-set
    identification's non-mated probes)."""
    classes = np.unique(labels)
    if not 0 <= k < len(classes):
        raise ValueError(f"--unenrolled-classes must be in [0, {len(classes) - 1}] (classes - 1), got {k}")
    chosen = np.random.default_rng([seed, 7919]).permutation(classes)[:k]
    return np.isin(labels, chosen)


def split_gallery(path: str, out_dir: str, *, gallery_query: Optional[str] = None, query_fraction: float = 0.5,
                  seed: int = 0, overwrite: bool = False, first_half: bool = False,
                  unenrolled_classes: int = 0) -> Dict[str, object]:
    """Write ``out_dir/gallery.parquet`` and ``out_dir/queries.parquet`` (all columns of ``path``).
    Without ``gallery_query``, ``first_half`` picks :func:`first_half_mask` instead of the seeded
    :func:`query_mask`. ``unenrolled_classes`` K: the rows of K seeded classes all become queries
    (:func:`unenrolled`). Checks everything before writing; each file is written to a temp path
    and renamed."""
    out = {"gallery": os.path.join(out_dir, "gallery.parquet"), "queries": os.path.join(out_dir, "queries.parquet")}
    if not overwrite:
        for p in out.values():
            if os.path.exists(p):
                raise FileExistsError(f"{p} exists (pass --overwrite)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    t = read_table(path)
    for col in ("id", "label"):
        if col not in t.column_names:
            raise DataError(f"missing column {col!r} (has {t.column_names})", file=path, column=col)
    ids, labels = t.column("id").to_numpy(), t.column("label").to_numpy()
    if gallery_query:
        mask = _mask_from_file(gallery_query, ids, path)
    elif first_half:
        mask = first_half_mask(labels)
    else:
        mask = query_mask(ids, labels, query_fraction, seed)
    if unenrolled_classes:
        mask = mask | unenrolled(labels, unenrolled_classes, seed)
    os.makedirs(out_dir, exist_ok=True)
    for name, keep in (("gallery", ~mask), ("queries", mask)):
        write_parquet_atomic(t.filter(pa.array(keep)), out[name])
    return {**out, "gallery_rows": int((~mask).sum()), "query_rows": int(mask.sum()),
            "classes": int(len(np.unique(labels))), "unenrolled_classes": int(unenrolled_classes)}


def add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True,
                   help="Parquet with id and label columns (export-index embeddings, or a dataset split)")
    p.add_argument("--out", required=True, help="directory for gallery.parquet and queries.parquet")
    p.add_argument("--gallery-query", default=None,
                   help="a dataset's gallery_query.parquet (id, is_query) deciding the split")
    p.add_argument("--query-fraction", type=float, default=0.5,
                   help="without --gallery-query: share of each class's rows that become queries "
                        "(seeded; at least one gallery row per class)")
    p.add_argument("--unenrolled-classes", type=int, default=0, metavar="K",
                   help="all rows of K seeded classes become queries with no gallery row: non-mated probes "
                        "for open-set identification (evaluate --protocol ident then reports DIR@FPIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def run_split(a: argparse.Namespace) -> int:
    """CLI: prints a one-line JSON summary; bad input -> one line on stderr, exit 2."""
    if not 0.0 <= a.query_fraction < 1.0:
        print(f"xclass split-gallery: error: --query-fraction must be in [0, 1), got {a.query_fraction}",
              file=sys.stderr)
        return 2
    try:
        info = split_gallery(a.input, a.out, gallery_query=a.gallery_query, query_fraction=a.query_fraction,
                             seed=a.seed, overwrite=a.overwrite, unenrolled_classes=a.unenrolled_classes)
    except (DataError, FileExistsError, FileNotFoundError, pa.ArrowInvalid, ValueError) as exc:
        if os.environ.get("XCLASS_DEBUG"):
            raise
        print(f"xclass split-gallery: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0
