"""Streaming validation of a task Parquet file (one record batch at a time).

Every failure raises :class:`DataError` naming the file, the global row index and the
column: missing column, wrong type, nulls, label out of range, NaN/Inf, empty label
list, bad shape (image size, fbank length vs ``num_frames``), empty file.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xclass.data.schema import (INPUT_GROUPS, LABEL_COLUMN, TASK_COLUMNS, Col, DataError,
                                describe, read_task_meta, type_ok)


def _first(mask: np.ndarray) -> Optional[int]:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _list_parts(arr: pa.Array):
    """(flat values as numpy, offsets from 0 as int64 [n+1]) of a list or fixed list array."""
    if pa.types.is_fixed_size_list(arr.type):
        k = arr.type.list_size
        return arr.flatten().to_numpy(zero_copy_only=False), np.arange(len(arr) + 1) * k
    off = arr.offsets.to_numpy().astype(np.int64)
    return arr.flatten().to_numpy(zero_copy_only=False), off - off[0]


def _value_row(offsets: np.ndarray, value_index: int) -> int:
    return int(np.searchsorted(offsets, value_index, side="right") - 1)


class _Checker:
    """Holds the per-file context so each check is a short method raising DataError."""

    def __init__(self, path: str, num_classes: Optional[int], opts: Dict) -> None:
        self.path, self.num_classes, self.opts = path, num_classes, opts

    def fail(self, reason: str, row: Optional[int] = None, column: Optional[str] = None):
        raise DataError(reason, file=self.path, row=row, column=column)

    def check_range(self, name: str, x: np.ndarray, offsets, row0: int, lo: int, hi: Optional[int]):
        bad = (x < lo) if hi is None else ((x < lo) | (x >= hi))
        i = _first(bad)
        if i is not None:
            row = i if offsets is None else _value_row(offsets, i)
            rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
            self.fail(f"value {x[i]} out of range {rng}", row0 + row, name)

    def check_column(self, col: Col, arr: pa.Array, row0: int, task: str) -> None:
        if arr.null_count:
            i = _first(arr.is_null().to_numpy(zero_copy_only=False))
            self.fail("null value", row0 + i, col.name)
        if col.kind in ("fixed", "list") or (col.kind == "image" and pa.types.is_fixed_size_list(arr.type)):
            values, offsets = _list_parts(arr)
            if col.finite:
                i = _first(~np.isfinite(values))
                if i is not None:
                    self.fail(f"non-finite value {values[i]}", row0 + _value_row(offsets, i), col.name)
            if col.name == LABEL_COLUMN[task]:
                self.check_range(col.name, values, offsets, row0, 0, self.num_classes)
                if not self.opts["allow_empty_labels"]:
                    i = _first(np.diff(offsets) == 0)
                    if i is not None:
                        self.fail("empty label list (not allowed for this split)", row0 + i, col.name)
            if col.name == "tokens":
                self.check_range(col.name, values, offsets, row0, 0, self.opts.get("vocab_size"))
            if col.name == "pkt_sizes":
                self.check_range(col.name, values, offsets, row0, 0, 65536)
            if col.name == "pkt_dirs":
                self.check_range(col.name, values + 1, offsets, row0, 0, 3)  # {-1, 0 (pad), +1}
        elif col.kind == "int":
            x = arr.to_numpy(zero_copy_only=False)
            if col.name == LABEL_COLUMN[task]:
                self.check_range(col.name, x, None, row0, 0, self.num_classes)
            elif col.name == "num_frames":
                self.check_range(col.name, x, None, row0, 1, None)
            elif col.name == "num_packets":
                self.check_range(col.name, x, None, row0, 1, self.opts["num_packets"] + 1)

    def check_fbank(self, batch: pa.RecordBatch, row0: int) -> None:
        n_mels = self.opts["n_mels"]
        _, off = _list_parts(batch.column("fbank"))
        frames = batch.column("num_frames").to_numpy(zero_copy_only=False).astype(np.int64)
        i = _first(np.diff(off) != frames * n_mels)
        if i is not None:
            self.fail(f"fbank has {int(off[i + 1] - off[i])} values, expected num_frames*n_mels = "
                      f"{int(frames[i])}*{n_mels}", row0 + i, "fbank")


def _check_schema(ck: _Checker, schema: pa.Schema, task: str, meta: Dict) -> list:
    """Column presence, types and fixed shapes; returns the known columns present."""
    specs = {c.name: c for c in TASK_COLUMNS[task]}
    names = set(schema.names)
    for c in specs.values():
        if c.required and c.name not in names:
            ck.fail("missing required column", column=c.name)
    groups = INPUT_GROUPS[task]
    if not any(all(n in names for n in g) for g in groups):
        best = max(groups, key=lambda g: sum(n in names for n in g))
        missing = [n for n in best if n not in names]
        ck.fail(f"missing input column (need one of {[list(g) for g in groups]})", column=missing[0])
    present = [specs[n] for n in schema.names if n in specs]
    for c in present:
        t = schema.field(c.name).type
        if not type_ok(c, t):
            ck.fail(f"has type {t}, expected {describe(c)}", column=c.name)
    _check_shapes(ck, schema, meta)
    return present


def _check_shapes(ck: _Checker, schema: pa.Schema, meta: Dict) -> None:
    names = set(schema.names)
    if "image" in names and pa.types.is_fixed_size_list(schema.field("image").type):
        shape = ck.opts.get("image_shape") or tuple(meta.get(k) for k in ("height", "width", "channels"))
        if any(s is None for s in shape):
            ck.fail("fixed-size image needs height/width/channels in the 'xclass' metadata "
                    "(or image_shape=)", column="image")
        size = schema.field("image").type.list_size
        if size != int(np.prod(shape)):
            ck.fail(f"image list size {size} != height*width*channels {tuple(shape)}", column="image")
    sizes = {n: schema.field(n).type.list_size for n in ("pkt_sizes", "pkt_dirs", "pkt_iat")
             if n in names and pa.types.is_fixed_size_list(schema.field(n).type)}
    if len(set(sizes.values())) > 1:
        ck.fail(f"packet columns disagree on N: {sizes}", column="pkt_dirs")
    if sizes:
        ck.opts["num_packets"] = next(iter(sizes.values()))
    fdim = ck.opts.get("feature_dim")
    if fdim is not None and "features" in names and schema.field("features").type.list_size != fdim:
        ck.fail(f"features size {schema.field('features').type.list_size} != {fdim}", column="features")


def validate_file(path: str, task: str, num_classes: Optional[int] = None, *,
                  allow_empty_labels: bool = False, vocab_size: Optional[int] = None,
                  image_shape=None, n_mels: Optional[int] = None, feature_dim: Optional[int] = None,
                  batch_rows: int = 65536) -> Dict:
    """Check one Parquet file of ``task`` (face|speaker|quic|xmc|xmc_labels) row batch by row batch.

    Labels must lie in ``[0, num_classes)`` (``num_classes=None``: only ``>= 0``). Shapes
    default to the file's ``xclass`` metadata. Returns ``{"num_rows", "columns", "meta",
    "label_min", "label_max"}``; raises :class:`DataError` on the first problem.
    """
    if task not in TASK_COLUMNS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASK_COLUMNS)}")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", file=path) from None
    schema = pf.schema_arrow
    meta = read_task_meta(schema)
    opts = dict(allow_empty_labels=allow_empty_labels, image_shape=image_shape, feature_dim=feature_dim,
                vocab_size=vocab_size if vocab_size is not None else meta.get("vocab_size"),
                n_mels=n_mels if n_mels is not None else meta.get("n_mels", 80), num_packets=0)
    ck = _Checker(path, num_classes, opts)
    if pf.metadata.num_rows == 0:
        ck.fail("file has no rows")
    present = _check_schema(ck, schema, task, meta)
    lab = LABEL_COLUMN[task]
    lo, hi, row0 = None, None, 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[c.name for c in present]):
        for c in present:
            ck.check_column(c, batch.column(c.name), row0, task)
        if "fbank" in batch.schema.names and "num_frames" in batch.schema.names:
            ck.check_fbank(batch, row0)
        labels = batch.column(lab)
        if pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type):
            labels = labels.flatten()
        if len(labels):
            bmin, bmax = pc.min_max(labels).values()
            lo = bmin.as_py() if lo is None else min(lo, bmin.as_py())
            hi = bmax.as_py() if hi is None else max(hi, bmax.as_py())
        row0 += batch.num_rows
    return {"num_rows": row0, "columns": [c.name for c in present], "meta": meta,
            "label_min": lo, "label_max": hi}
