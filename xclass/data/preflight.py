"""The data check ``xclass train`` runs before step 1: one streaming pass over the training split.

Per file (:func:`xclass.data.validate.validate_file`, one record batch at a time): required
columns with integer labels (strings or floats are refused, not parsed), no nulls, labels in
``[0, num_classes)``, finite features, shapes matching meta.json. Across files: ids unique.
Then the reader's plan: at least one optimizer step per epoch on every rank. Every failure is
one :class:`~xclass.data.schema.DataError` naming file, row and column.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.schema import DataError
from xclass.data.validate import validate_file


def check_training_files(paths: Sequence[str], task: str, num_classes: int, meta: Mapping[str, Any],
                         batch_rows: int = 65536) -> Dict[str, int]:
    """Validate every file of the training split and the uniqueness of ``id`` across them.
    Returns ``{"num_rows": total}``; raises DataError on the first problem."""
    opts = _shape_opts(meta)
    ids: List[np.ndarray] = []
    total = 0
    for path in paths:
        try:
            # XC-repository data has training rows without labels; the losses skip them
            info = validate_file(path, task, num_classes, batch_rows=batch_rows, allow_empty_labels=True, **opts)
            total += info["num_rows"]
            ids.append(_ids(path, batch_rows))
        except (OSError, pa.ArrowException) as exc:  # corrupt pages, truncated file
            raise DataError(f"unreadable Parquet data ({str(exc).splitlines()[0][:200]})", file=path) from None
    _check_unique(paths, ids)
    return {"num_rows": total}


def _shape_opts(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Shapes meta.json states (the files' own metadata is used otherwise)."""
    inputs = meta.get("inputs", {}) if isinstance(meta.get("inputs"), dict) else {}
    opts: Dict[str, Any] = {}
    fdim = (inputs.get("features") or {}).get("feature_dim") if isinstance(inputs.get("features"), dict) else None
    if fdim is not None:
        opts["feature_dim"] = int(fdim)
    return opts


def _ids(path: str, batch_rows: int) -> np.ndarray:
    pf = pq.ParquetFile(path)
    parts = [b.column(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
             for b in pf.iter_batches(batch_size=batch_rows, columns=["id"])]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _check_unique(paths: Sequence[str], ids: List[np.ndarray]) -> None:
    """The first repeated id (in file order) as file/row of its second occurrence."""
    if not ids:
        return
    allids = np.concatenate(ids)
    order = np.argsort(allids, kind="stable")
    s = allids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size == 0:
        return
    second = int(np.min(order[dup + 1]))  # earliest row that repeats an earlier id
    first = int(order[np.searchsorted(s, allids[second], side="left")])
    bounds = np.cumsum([0] + [len(a) for a in ids])
    fi = int(np.searchsorted(bounds, second, side="right") - 1)
    f0 = int(np.searchsorted(bounds, first, side="right") - 1)
    raise DataError(f"duplicate id {int(allids[second])} (first seen in {paths[f0]} row {first - bounds[f0]})",
                    file=paths[fi], row=int(second - bounds[fi]), column="id")


def check_enough_rows(reader: Any, paths: Sequence[str], batch_size: int, grad_accum: int,
                      world_size: int, rows: Optional[int] = None) -> None:
    """At least one optimizer step per epoch on every rank, else DataError (an empty or tiny
    split would otherwise never finish an epoch)."""
    if reader.batches_per_epoch() // max(1, grad_accum) >= 1:
        return
    n = rows if rows is not None else sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    raise DataError(f"training split has {n} rows: fewer than one optimizer step per epoch "
                    f"(data.batch_size={batch_size} x train.grad_accum={grad_accum} over {world_size} "
                    f"rank(s)); add rows or lower data.batch_size", file=where)
