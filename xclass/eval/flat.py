"""Exact flat (brute-force) top-k on CPU with torch: GEMM per label block + fused block top-k.

Why not faiss ``IndexFlat.search``: for small k its CPU path spends much of its time in a
per-query heap; here the time goes almost entirely into one fp32 GEMM per (query chunk,
label block), written into a reused buffer (a fresh multi-GB score tensor per call costs
page faults), followed by a cheap selection:

* ``grouped_topk``: the score row is viewed as groups of ``group`` columns; the k groups with
  the largest maxima contain every element of the row's top-k (an element above the k-th
  value lifts its group's max above it, and fewer than k such groups exist; ties at the
  k-th value are filled from groups whose max equals it). So only ``amax`` over the block
  (one vectorised pass) plus a top-k over k * group candidates is needed, instead of a
  top-k over the whole block.
* the per-block winners are merged by one top-k over (blocks x k) columns per query chunk.

All tensors are float32; the label matrix can be a read-only memory-mapped view (no copy).
With ``device`` (e.g. ``cuda``, for ``xclass evaluate --gpu`` without faiss GPU support) the
shard is copied to that device once and every GEMM and top-k runs there; only the (scores,
ids) of the top k come back to the host.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import torch


def grouped_topk(S: torch.Tensor, k: int, group: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k along dim 1 of a contiguous S [m, n] -> (values, columns) [m, min(k, n)],
    best first. Equal to ``torch.topk(S, k)`` up to the order of tied values."""
    m, n = S.shape
    kk = min(k, n)
    ng = n // group
    if ng < 4 * kk:                          # too few groups for the shortcut to pay off
        return torch.topk(S, kk, dim=1)
    head = ng * group
    G = S.as_strided((m, ng, group), (n, group, 1))      # a view, also when n > head
    gi = torch.topk(G.amax(dim=2), kk, dim=1).indices                        # [m, kk]
    cand = torch.gather(G, 1, gi[:, :, None].expand(m, kk, group)).reshape(m, kk * group)
    v, j = torch.topk(cand, kk, dim=1)
    col = torch.gather(gi, 1, torch.div(j, group, rounding_mode="floor")) * group + j % group
    if head == n:
        return v, col
    tv, tj = torch.topk(S[:, head:], min(kk, n - head), dim=1)              # ragged tail
    v2, p = torch.topk(torch.cat([v, tv], 1), kk, dim=1)
    return v2, torch.gather(torch.cat([col, tj + head], 1), 1, p)


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(x, dtype=np.float32)
    with warnings.catch_warnings():          # mmap views are read-only; we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


class TorchFlat:
    """Exact search over one shard: xb [N, d] float32 (replicated, may be an mmap view),
    ids [N] int64 global ids. ``higher_is_better=False`` means squared L2 distance.

    Defaults were measured on the 2-core dev box (tools/bench_eval.py): large tiles keep the
    GEMM near its peak (4096 x 32768 scores = 512 MiB buffer, reused); small tiles that fit
    in L2 were 3-10x slower there (threads waking per tiny GEMM). ``device``: where the shard,
    the score buffer and the queries live (default cpu)."""

    def __init__(self, xb: np.ndarray, ids: Optional[np.ndarray] = None,
                 higher_is_better: bool = True, db_block: int = 32768, q_chunk: int = 4096,
                 group: int = 64, device: Optional[torch.device] = None):
        self.device = torch.device(device if device is not None else "cpu")
        self.x = _as_tensor(xb).to(self.device)
        self.ids = np.arange(len(xb), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self.higher_is_better = higher_is_better
        self.db_block, self.q_chunk, self.group = db_block, q_chunk, group
        self.norms = None
        if not higher_is_better:             # ||x||^2, computed once per shard, blockwise
            self.norms = torch.cat([(b * b).sum(1) for b in torch.split(self.x, 1 << 18)])

    def _chunk(self, qt: torch.Tensor, k: int, buf: torch.Tensor):
        """qt [m, d] -> (scores, columns) [m, kk]; for L2 the score is 2 q.x - ||x||^2."""
        m, N = qt.shape[0], self.x.shape[0]
        vs, cs = [], []
        for b in range(0, N, self.db_block):
            nb = min(self.db_block, N - b)
            S = buf[: m * nb].view(m, nb)
            torch.mm(qt, self.x[b:b + nb].T, out=S)
            if self.norms is not None:        # ascending distance == descending 2 q.x - ||x||^2
                S.mul_(2).sub_(self.norms[b:b + nb])
            v, c = grouped_topk(S, k, self.group)
            vs.append(v)
            cs.append(c + b)
        if len(vs) == 1:
            return vs[0], cs[0]
        v, p = torch.topk(torch.cat(vs, 1), min(k, N), dim=1)
        return v, torch.gather(torch.cat(cs, 1), 1, p)

    def search(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """q [n, d] float32 (already normalised for cosine) -> (D [n, k], I [n, k] global ids);
        rows are padded with -1 ids (-inf / +inf scores) when the shard holds fewer than k."""
        n, N = len(q), self.x.shape[0]
        kk = min(k, N)
        D = np.empty((n, k), np.float32)
        I = np.full((n, k), -1, np.int64)
        D[:, kk:] = -np.inf if self.higher_is_better else np.inf
        if n == 0 or kk == 0:
            return D, I
        qall = _as_tensor(q).to(self.device)
        buf = torch.empty(min(self.q_chunk, n) * min(self.db_block, N), device=self.device)
        for s in range(0, n, self.q_chunk):
            qt = qall[s:s + self.q_chunk]
            v, c = self._chunk(qt, kk, buf)
            if self.norms is not None:
                v = (qt * qt).sum(1, keepdim=True) - v
            D[s:s + len(qt), :kk] = v.cpu().numpy()
            I[s:s + len(qt), :kk] = self.ids[c.cpu().numpy()]
        return D, I
