"""Parquet files to numpy: path expansion, the decoded size of a row group's columns (for the
reader's memory bound) and Arrow tables as ``dict[str, np.ndarray]``.

Layout: scalar columns ``[n]``; ``fixed_size_list`` columns ``[n, k]``; variable ``list``
columns as CSR: ``batch[c]`` = flat values and ``batch[c + "_offsets"]`` = int64 ``[n + 1]``
starting at 0; binary/string columns as object arrays ``[n]``.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Sequence, Union

import numpy as np
import pyarrow as pa

from xclass.data.schema import DataError


def expand_paths(paths: Union[str, Sequence[str]]) -> List[str]:
    """Files from paths, directories (``*.parquet`` inside, sorted) and glob patterns."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[str] = []
    for p in map(str, paths):
        if os.path.isdir(p):
            out.extend(sorted(glob.glob(os.path.join(p, "*.parquet"))))
        elif any(ch in p for ch in "*?["):
            out.extend(sorted(glob.glob(p)))
        else:
            out.append(p)
    if not out:
        raise DataError(f"no Parquet files found in {list(paths)}")
    return out


_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def decoded_bytes(rg_meta, columns: Sequence[str]) -> int:
    """Approximate in-memory bytes of ``columns`` in one row group (leaf values x width).

    Encoded sizes are useless here (a column of zeros encodes to a few bytes); the leaf
    value count is exact. Byte arrays fall back to their uncompressed encoded size.
    """
    wanted, total = set(columns), 0
    for j in range(rg_meta.num_columns):
        col = rg_meta.column(j)
        if col.path_in_schema.split(".")[0] not in wanted:
            continue
        width = _WIDTH.get(col.physical_type)
        total += col.num_values * width if width else col.total_uncompressed_size
    return total


def table_to_numpy(table: pa.Table) -> Dict[str, np.ndarray]:
    """Arrow table -> dict of numpy arrays (the layout of the module docstring)."""
    out: Dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        t = arr.type
        if pa.types.is_fixed_size_list(t):
            out[name] = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), t.list_size)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            off = arr.offsets.to_numpy().astype(np.int64)
            out[name] = arr.flatten().to_numpy(zero_copy_only=False)
            out[name + "_offsets"] = off - off[0]
        else:
            out[name] = arr.to_numpy(zero_copy_only=False)
    return out
