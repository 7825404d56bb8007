"""Reading embedding / pairs / trials Parquet files with checks that name the file, column, row.

Embedding files (written by the training side): ``id`` int64, ``embedding``
fixed_size_list<float32>[d] (plain list<float> of constant length is accepted too), and for
queries either ``label`` int64 or ``labels`` list<int64>. Every reader also accepts numpy
arrays through :class:`ArraySource`.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.schema import DataError
from xclass.eval.metrics import LabelSets


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    """Write ``table`` to ``path.tmp`` and rename: a reader never sees a half-written file."""
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


@dataclass
class Batch:
    """One chunk of rows: ids [b] int64, emb [b, d] float32, labels (LabelSets or None),
    ``offset`` = index of the first row in its file."""

    ids: np.ndarray
    emb: np.ndarray
    labels: Optional[LabelSets]
    offset: int


@dataclass
class ArraySource:
    """In-memory stand-in for an embedding file: emb [n, d], ids [n] (default arange),
    labels: [n] ints, list of lists, or LabelSets."""

    emb: np.ndarray
    ids: Optional[np.ndarray] = None
    labels: Union[None, np.ndarray, Sequence[Sequence[int]], LabelSets] = None
    name: str = "<array>"


Source = Union[str, os.PathLike, ArraySource]


def expand_sources(paths: Sequence) -> List[Source]:
    """Paths, directories (all ``*.parquet`` inside, sorted) or globs -> ordered sources."""
    out: List[Source] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            out.append(p)
        elif os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.parquet")))
            if not found:
                raise FileNotFoundError(f"{p}: directory holds no *.parquet files")
            out.extend(found)
        elif any(ch in str(p) for ch in "*?["):
            found = sorted(glob.glob(str(p)))
            if not found:
                raise FileNotFoundError(f"{p}: pattern matches no file")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise ValueError("no embedding sources given")
    return out


def _open(path: str) -> pq.ParquetFile:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:                   # pyarrow raises several types for bad files
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc
    if pf.metadata.num_rows == 0:
        raise ValueError(f"{path}: file has no rows")
    return pf


def read_table(path: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """``pq.read_table`` for the evaluation side's inputs: a missing, unreadable or damaged file,
    or a missing column, is a DataError naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pq.read_table(path, columns=None if columns is None else list(columns))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read the Parquet file ({exc})", file=path) from None


def _read_rows(path: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches`` of ``path``; damaged data pages (the footer read fine) -> ValueError naming the
    file and the rows read before."""
    rows = 0
    while True:
        try:
            rb = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{path}: cannot read the Parquet data after row {rows} ({exc})") from None
        rows += rb.num_rows
        yield rb


def _require(path: str, schema: pa.Schema, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {schema.names}")


def label_column(path: str) -> Optional[str]:
    names = _open(path).schema_arrow.names
    return "labels" if "labels" in names else ("label" if "label" in names else None)


def num_rows(src: Source) -> int:
    return len(src.emb) if isinstance(src, ArraySource) else _open(str(src)).metadata.num_rows


def _to_matrix(path: str, col: pa.Array, offset: int) -> np.ndarray:
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lens = np.diff(col.offsets.to_numpy())
        if len(lens) and (lens != lens[0]).any():
            row = int(np.flatnonzero(lens != lens[0])[0])
            raise ValueError(f"{path}: column 'embedding' row {offset + row} has length "
                             f"{lens[row]}, expected {lens[0]}")
        d = int(lens[0]) if len(lens) else 0
    else:
        raise ValueError(f"{path}: column 'embedding' has type {col.type}, expected a list of floats")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: column 'embedding' row {offset + row} is null")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    emb = flat.reshape(len(col), d)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: column 'embedding' row {offset + int(np.flatnonzero(bad)[0])} "
                         "contains NaN or inf")
    return emb


def _labels(path: str, table: pa.Table, name: Optional[str]) -> Optional[LabelSets]:
    if name is None:
        return None
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise ValueError(f"{path}: column {name!r} has null rows")
    if name == "label":
        v = col.to_numpy().astype(np.int64)
        return LabelSets(np.arange(len(v) + 1, dtype=np.int64), v)
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.flatten().to_numpy().astype(np.int64)
    return LabelSets(offsets - offsets[0], values)


def _array_batches(src: ArraySource, batch_rows: int, with_labels: bool) -> Iterator[Batch]:
    emb = np.asarray(src.emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"{src.name}: embeddings must be 2-D, got shape {emb.shape}")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"{src.name}: embedding row {int(np.flatnonzero(bad)[0])} contains NaN or inf")
    ids = np.arange(len(emb), dtype=np.int64) if src.ids is None else np.asarray(src.ids, np.int64)
    labels = src.labels
    if with_labels and labels is None:
        raise ValueError(f"{src.name}: labels are required")
    if labels is not None and not isinstance(labels, LabelSets):
        arr = labels if isinstance(labels, np.ndarray) else None
        labels = (LabelSets(np.arange(len(arr) + 1, dtype=np.int64), arr.astype(np.int64))
                  if arr is not None and arr.ndim == 1 else LabelSets.from_lists(labels))
    for s in range(0, len(emb), batch_rows):
        e = min(s + batch_rows, len(emb))
        sub = None
        if labels is not None:
            p = labels.indptr[s:e + 1]
            sub = LabelSets(p - p[0], labels.indices[p[0]:p[-1]])
        yield Batch(ids[s:e], emb[s:e], sub, s)


def iter_batches(src: Source, batch_rows: int = 65536, with_labels: bool = False) -> Iterator[Batch]:
    """Stream ``src`` in chunks of at most ``batch_rows`` rows (bounded memory)."""
    if isinstance(src, ArraySource):
        yield from _array_batches(src, batch_rows, with_labels)
        return
    path = str(src)
    pf = _open(path)
    lab = label_column(path) if with_labels else None
    if with_labels and lab is None:
        raise ValueError(f"{path}: missing label column: need 'label' (int64) or 'labels' (list<int64>)")
    cols = ["id", "embedding"] + ([lab] if lab else [])
    _require(path, pf.schema_arrow, cols)
    offset = 0
    for rb in _read_rows(path, pf.iter_batches(batch_size=batch_rows, columns=cols)):
        t = pa.Table.from_batches([rb])
        ids = t.column("id").combine_chunks()
        if ids.null_count:
            raise ValueError(f"{path}: column 'id' has null rows")
        emb = _to_matrix(path, t.column("embedding").combine_chunks(), offset)
        yield Batch(ids.to_numpy().astype(np.int64), emb, _labels(path, t, lab), offset)
        offset += len(ids)


def read_all(src: Source, with_labels: bool = False) -> Batch:
    """Whole file as one Batch (small files, tests, face/speaker protocols)."""
    parts: List[Batch] = list(iter_batches(src, 1 << 20, with_labels))
    labels = None
    if with_labels:
        indptr = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            indptr.append(p.labels.indptr[1:] + base)
            base += p.labels.indptr[-1]
        labels = LabelSets(np.concatenate(indptr), np.concatenate([p.labels.indices for p in parts]))
    return Batch(np.concatenate([p.ids for p in parts]), np.concatenate([p.emb for p in parts]),
                 labels, 0)


def has_column(path: str, name: str) -> bool:
    """Whether the Parquet file ``path`` has a column ``name``."""
    return name in _open(str(path)).schema_arrow.names


def read_columns(path: str, cols: Sequence[str], kinds: Sequence[str]) -> List[np.ndarray]:
    """Read small scalar columns (pairs / trial lists), checking names and nulls.
    ``kinds``: 'int' or 'bool' per column."""
    pf = _open(str(path))
    _require(str(path), pf.schema_arrow, cols)
    try:
        t = pf.read(columns=list(cols))
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: cannot read the Parquet data ({exc})") from None
    out = []
    for c, kind in zip(cols, kinds):
        col = t.column(c).combine_chunks()
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{path}: column {c!r} row {row} is null")
        arr = col.to_numpy(zero_copy_only=False)
        out.append(arr.astype(bool) if kind == "bool" else arr.astype(np.int64))
    return out


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr over ``total`` queries (None without tqdm)."""
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="q", disable=not enabled, file=sys.stderr)
    except ImportError:  # pragma: no cover
        return None
