"""Streaming, atomic Parquet output: numpy -> Arrow helpers, a part-rotating writer, a temp dir.

Everything the generators write goes through :class:`PartWriter` (bounded memory: one
chunk at a time, row groups of ``row_group_rows``) inside :func:`atomic_dir` (outputs
appear under their final name only when complete).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Dict, Iterator, List, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.schema import META_KEY, SCHEMA_VERSION


def fixed_list(values2d: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    """``[n, k]`` numpy array -> ``fixed_size_list<value_type>[k]`` Arrow array (no copy when dtypes match)."""
    n, k = values2d.shape
    flat = pa.array(np.ascontiguousarray(values2d).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, k)


def var_list(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """CSR ``(values, offsets[n+1])`` -> ``list<value_type>`` Arrow array."""
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)),
                                    pa.array(values, type=value_type))


def with_task_meta(schema: pa.Schema, task: str, **meta) -> pa.Schema:
    """Attach the ``xclass`` key-value metadata (task, schema version, shapes) to a schema."""
    payload = {"task": task, "schema_version": SCHEMA_VERSION, **meta}
    return schema.with_metadata({META_KEY: json.dumps(payload, sort_keys=True).encode()})


class PartWriter:
    """Write record batches to ``path`` (one file) or ``path/part-00000.parquet``... .

    ``rows_per_file=None`` writes one file. Otherwise the writer rotates to a new part
    every ``rows_per_file`` rows (exactly; the last part holds the rest). Row groups hold
    up to ``row_group_rows`` rows.
    """

    def __init__(self, path: str, schema: pa.Schema, *, row_group_rows: int,
                 rows_per_file: Optional[int] = None) -> None:
        self.path, self.schema = path, schema
        self.row_group_rows, self.rows_per_file = row_group_rows, rows_per_file
        self.files: List[str] = []
        self.rows = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._rows_in_file = 0
        if rows_per_file is not None:
            os.makedirs(path, exist_ok=True)

    def _open(self) -> None:
        if self.rows_per_file is None:
            fname = self.path
        else:
            fname = os.path.join(self.path, f"part-{len(self.files):05d}.parquet")
        self._writer = pq.ParquetWriter(fname, self.schema, compression="snappy")
        self.files.append(fname)
        self._rows_in_file = 0

    def write(self, columns: Mapping[str, pa.Array]) -> None:
        """Append one chunk given as ``{column: arrow array}``; splits it across parts if needed."""
        batch = pa.RecordBatch.from_arrays([columns[f.name] for f in self.schema],
                                           schema=self.schema)
        while True:
            if self._writer is not None and self.rows_per_file is not None \
                    and self._rows_in_file >= self.rows_per_file:
                self._writer.close()
                self._writer = None
            if self._writer is None:
                self._open()
            room = batch.num_rows if self.rows_per_file is None else self.rows_per_file - self._rows_in_file
            part = batch.slice(0, room)
            self._writer.write_batch(part, row_group_size=self.row_group_rows)
            self._rows_in_file += part.num_rows
            self.rows += part.num_rows
            batch = batch.slice(part.num_rows)
            if batch.num_rows == 0:
                return

    def close(self) -> List[str]:
        if self._writer is None:  # no rows: still write a valid (empty) file
            self._open()
        self._writer.close()
        self._writer = None
        return self.files


@contextlib.contextmanager
def atomic_dir(out_dir: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temp directory beside ``out_dir``; rename it to ``out_dir`` on success.

    On error the temp directory is removed and ``out_dir`` is untouched. An existing
    ``out_dir`` is an error unless ``overwrite`` (then it is replaced after success). Without
    ``overwrite`` the name is reserved at the start (``mkdir``, exclusive): a directory another
    process creates there meanwhile is never replaced. Temp directories left by killed
    writers (their process is gone) are removed first.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    _clean_stale(parent, os.path.basename(out_dir))
    reserved = False
    if not overwrite:
        try:
            os.mkdir(out_dir)  # exclusive: fails if it exists or another writer got there first
            reserved = True
        except FileExistsError:
            raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it") from None
    tmp = staging_dir(out_dir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if reserved:
            _rmdir_quiet(out_dir)
        raise
    if reserved:
        try:
            os.rename(tmp, out_dir)  # replaces our empty reservation only (ENOTEMPTY otherwise)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{out_dir} was filled by another process while this one wrote; "
                                  "left untouched (nothing written)") from None
    elif os.path.exists(out_dir):
        old = tmp + ".old"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def staging_dir(out_dir: str) -> str:
    """A new, empty temp directory beside ``out_dir`` (``.NAME.tmp-PID-XXXXXXXX``), after removing
    those left by writers whose process is gone."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    _clean_stale(parent, os.path.basename(out_dir))
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    return tmp


def _clean_stale(parent: str, base: str) -> None:
    """Remove ``.BASE.tmp-PID-*`` directories whose writer process no longer exists."""
    prefix = f".{base}.tmp-"
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str, obj: Dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
