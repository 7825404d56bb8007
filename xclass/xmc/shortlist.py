"""Hard-negative shortlist: a FAISS index over this rank's label embeddings (a snapshot),
rebuilt every ``refresh_steps`` optimizer steps (set it to the steps of an epoch for
per-epoch refresh). Each rank searches the *global* query batch in its own shard only, so
no label vector ever leaves its rank. torch is imported before faiss (OpenMP clash), and the
OpenMP thread count is set explicitly (faiss in forked children hangs otherwise)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch  # noqa: F401  (before faiss: OpenMP runtime order)

KINDS = ("flat", "hnsw")


class Shortlist:
    """k nearest labels (inner product) per query within this rank's shard."""

    def __init__(self, k: int, refresh_steps: int, kind: str = "flat", threads: int = 1,
                 hnsw_m: int = 32) -> None:
        if kind not in KINDS:
            raise ValueError(f"shortlist_index {kind!r} not in {KINDS}")
        if k < 1 or refresh_steps < 1:
            raise ValueError(f"shortlist_k and shortlist_refresh must be >= 1, got {k}, {refresh_steps}")
        self.k, self.refresh_steps, self.kind = int(k), int(refresh_steps), kind
        self.threads, self.hnsw_m = int(threads), int(hnsw_m)
        self.index = None
        self.built_at: Optional[int] = None
        self.size = 0

    def stale(self, step: int) -> bool:
        return self.index is None or step - int(self.built_at or 0) >= self.refresh_steps

    def rebuild(self, label_emb: np.ndarray, step: int) -> None:
        """label_emb float32 [R, d] (normalised by the caller for cosine scores)."""
        import faiss

        faiss.omp_set_num_threads(self.threads)
        x = np.ascontiguousarray(label_emb, dtype=np.float32)
        d = x.shape[1]
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.add(x)
        self.index, self.built_at, self.size = index, int(step), x.shape[0]

    def search(self, q: np.ndarray) -> np.ndarray:
        """q float32 [B, d] -> local label indices int64 [B, min(k, R)] (-1 = none)."""
        import faiss

        faiss.omp_set_num_threads(self.threads)
        _, idx = self.index.search(np.ascontiguousarray(q, dtype=np.float32), min(self.k, self.size))
        return idx
