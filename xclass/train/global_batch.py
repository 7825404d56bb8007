"""World-size-invariant data order: every rank reads the same global batches and keeps its slice.

With ``data.shard_mode: global_batch`` the global batch of step t is the same rows in the
same order whatever the world size, so a run on W ranks sees exactly the batches of the
single-process run (used by the distributed-equals-single-process tests and for exact
golden losses). It costs W times the reading I/O; ``rows`` (the default) reads each row once.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator

import numpy as np


def slice_batch(batch: Dict[str, np.ndarray], lo: int, hi: int) -> Dict[str, np.ndarray]:
    """Rows [lo, hi) of a reader batch (CSR list columns re-based)."""
    out: Dict[str, np.ndarray] = {}
    for k, v in batch.items():
        if k.endswith("_offsets"):
            continue
        off = batch.get(k + "_offsets")
        if off is not None:
            a, b = int(off[lo]), int(off[hi])
            out[k] = v[a:b]
            out[k + "_offsets"] = off[lo : hi + 1] - a
        else:
            out[k] = v[lo:hi]
    return out


class GlobalBatchSlicer:
    """Wraps a world-size-1 reader of global batches; yields rank ``rank``'s contiguous slice."""

    def __init__(self, reader: Any, rank: int, world_size: int) -> None:
        if reader.batch_rows % world_size:
            raise ValueError(f"data.batch_size={reader.batch_rows} must be divisible by the "
                             f"world size {world_size} with data.shard_mode=global_batch")
        self.reader, self.rank, self.world_size = reader, rank, world_size

    def batches_per_epoch(self) -> int:
        return self.reader.batches_per_epoch()

    def set_epoch(self, epoch: int) -> None:
        self.reader.set_epoch(epoch)

    def state_dict(self) -> Dict[str, int]:
        return self.reader.state_dict()

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.reader.load_state_dict(state)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        per = self.reader.batch_rows // self.world_size
        for batch in self.reader:
            yield slice_batch(batch, self.rank * per, (self.rank + 1) * per)
