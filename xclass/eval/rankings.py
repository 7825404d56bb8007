"""Rankings as Parquet (``xclass evaluate --protocol xmc|ident --rankings``): one row per query
with its top-K label ids and scores (XMC: the retrieved labels; identification: the labels of
the K nearest gallery rows), so a run can be rescored or inspected without re-searching."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np


class RankingWriter:
    """Streams (query id, top-K label ids, scores) rows into a Parquet file: ``id`` int64,
    ``labels`` list<int64>, ``scores`` list<float32>; ``path + ".tmp"`` renamed on close."""

    def __init__(self, path: str, k: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.k, self.pa = path, k, pa
        self.schema = pa.schema([("id", pa.int64()), ("labels", pa.list_(pa.int64())),
                                 ("scores", pa.list_(pa.float32()))])
        d = os.path.dirname(os.path.abspath(path))
        self.made_dir = None if os.path.isdir(d) else d
        os.makedirs(d, exist_ok=True)
        self.w = pq.ParquetWriter(path + ".tmp", self.schema)

    def write(self, ids: np.ndarray, topk: np.ndarray, scores: np.ndarray) -> None:
        """ids [b]; topk [b, K] (-1 pads); scores [b, K]."""
        pa, n, k = self.pa, len(ids), self.k
        topk = np.asarray(topk, np.int64)
        scores = np.where(topk >= 0, np.asarray(scores, np.float32), -np.inf).astype(np.float32)
        off = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        self.w.write_table(pa.table({
            "id": pa.array(np.asarray(ids, np.int64)),
            "labels": pa.ListArray.from_arrays(off, pa.array(topk.reshape(-1))),
            "scores": pa.ListArray.from_arrays(off, pa.array(scores.reshape(-1)))}, schema=self.schema))

    def close(self) -> None:
        self.w.close()
        os.replace(self.path + ".tmp", self.path)

    def abort(self) -> None:
        """Close and remove the temp file (and the folder made for it, when left empty): nothing
        is left at ``path``."""
        self.w.close()
        os.remove(self.path + ".tmp")
        if self.made_dir is not None and not os.listdir(self.made_dir):
            os.rmdir(self.made_dir)


@contextmanager
def ranking_writer(path: Optional[str], k: int) -> Iterator[Optional[RankingWriter]]:
    """A :class:`RankingWriter` for ``path`` (None: no file), closed when the block ends and
    aborted when it raises."""
    w = RankingWriter(path, k) if path else None
    try:
        yield w
    except BaseException:
        if w is not None:
            w.abort()
        raise
    if w is not None:
        w.close()


def write_rankings(path: str, ids: np.ndarray, topk: np.ndarray, scores: np.ndarray) -> None:
    """All rows at once: ids [n], topk [n, K] (-1 pads), scores [n, K] -> ``path`` (atomic)."""
    w = RankingWriter(path, np.asarray(topk).shape[1])
    w.write(ids, topk, scores)
    w.close()
