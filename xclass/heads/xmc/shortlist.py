"""Hard-negative shortlist: a snapshot of this rank's label embeddings, searched by inner
product and rebuilt every ``refresh_steps`` optimizer steps (set it to the steps of an epoch for
per-epoch refresh). Each rank searches the *global* query batch in its own shard only, so no
label vector ever leaves its rank.

``kind="flat"`` (exact): the snapshot is a tensor on the device of the embeddings it was built
from and the search is a blocked GEMM + top-k there (GPU or CPU, same code, no host copy).
``kind="hnsw"``: a faiss HNSW index on the CPU (tensors are copied to the host and the ids back).
torch is imported before faiss (OpenMP clash), and the OpenMP thread count is set explicitly
(faiss in forked children hangs otherwise)."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch  # (imported before faiss: OpenMP runtime order)

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

    def rebuild(self, label_emb: Union[np.ndarray, torch.Tensor], step: int) -> None:
        """label_emb float32 [R, d] (normalised by the caller for cosine scores), a tensor on any
        device or a numpy array."""
        if self.kind == "flat":
            x = _tensor(label_emb).detach()
            self.index = x.to(dtype=torch.float32, copy=True).contiguous()
        else:
            import faiss

            faiss.omp_set_num_threads(self.threads)
            x = _host(label_emb)
            index = faiss.IndexHNSWFlat(x.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.add(x)
            self.index = index
        self.built_at, self.size = int(step), int(x.shape[0])

    def search(self, q: Union[np.ndarray, torch.Tensor]) -> Union[np.ndarray, torch.Tensor]:
        """q float32 [B, d] -> local label indices int64 [B, min(k, R)] (-1 = none), the same
        kind as ``q`` (a tensor stays on its device)."""
        k = min(self.k, self.size)
        if self.kind == "flat":
            idx = topk_ip(_tensor(q), self.index, k)
            return idx if torch.is_tensor(q) else idx.numpy()
        import faiss

        faiss.omp_set_num_threads(self.threads)
        _, idx = self.index.search(_host(q), k)
        return torch.from_numpy(idx).to(q.device) if torch.is_tensor(q) else idx


def _tensor(x: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """A tensor stays where it is; a numpy array becomes a CPU tensor sharing its memory."""
    return x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


def _host(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def topk_ip(q: torch.Tensor, x: torch.Tensor, k: int, block_elems: int = 1 << 26) -> torch.Tensor:
    """Exact inner-product top-k: q [B, d], x [R, d] (same device) -> int64 [B, k] row ids of x,
    best first. Queries are processed in blocks of at most ``block_elems`` scores."""
    q = q.to(device=x.device, dtype=x.dtype)
    out = torch.empty(q.shape[0], k, dtype=torch.int64, device=x.device)
    step = max(1, block_elems // max(1, x.shape[0]))
    for lo in range(0, q.shape[0], step):
        out[lo:lo + step] = (q[lo:lo + step] @ x.t()).topk(k, dim=1).indices
    return out
