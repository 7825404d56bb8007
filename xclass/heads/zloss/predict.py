"""Top-k prediction without materialising W whole.

top-k of the z-normalised outputs equals top-k of the raw outputs o = W h (z is an
increasing affine map of o per example), so prediction only needs raw scores. They are
computed over blocks of class rows with a running top-k merge: memory O(B (block + k)).
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch

from xclass.parallel import collectives as coll

ScoreBlock = Callable[[int, int], torch.Tensor]


def blockwise_topk(score_block: ScoreBlock, num_rows: int, batch: int, k: int,
                   block: int = 65536, offset: int = 0, device: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running top-k over class rows [0, num_rows).

    score_block(lo, hi) -> raw scores [batch, hi - lo] of rows lo..hi-1.
    Returns (values [batch, k'], ids [batch, k'] int64, ids shifted by ``offset``), k' = min(k, num_rows),
    sorted descending. ``device``: where the empty result of ``num_rows == 0`` lives (else the
    scores' device).
    """
    kk = min(k, num_rows)
    best_v = torch.full((batch, 0), float("-inf"), dtype=torch.float64, device=device)
    best_i = torch.zeros((batch, 0), dtype=torch.int64, device=device)
    for lo in range(0, num_rows, block):
        hi = min(num_rows, lo + block)
        sc = score_block(lo, hi).double()
        best_v, best_i = best_v.to(sc.device), best_i.to(sc.device)
        v, i = sc.topk(min(kk, hi - lo), dim=1)
        cat_v = torch.cat([best_v, v], 1)
        cat_i = torch.cat([best_i, i + lo], 1)
        best_v, pos = cat_v.topk(min(kk, cat_v.shape[1]), dim=1)
        best_i = cat_i.gather(1, pos)
    return best_v, best_i + offset


def merge_shards_topk(values: torch.Tensor, ids: torch.Tensor, k: int, group: Any
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge per-shard top-k (values, global ids) [B, k_r] into the global top-k, replicated.
    Shards may hold fewer than k classes (ragged k_r)."""
    if coll.world_size(group) == 1:
        return values, ids
    kk = coll.gather_sizes(values.shape[1], group)
    kmax = max(kk)
    pad = kmax - values.shape[1]
    v = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], 1)
    i = torch.cat([ids, ids.new_full((ids.shape[0], pad), -1)], 1)
    # gather along dim 0 of the transposed tensors keeps the helper's ragged-row contract
    all_v = coll.all_gather_nograd(v.t().contiguous(), group).t()
    all_i = coll.all_gather_nograd(i.t().contiguous(), group).t()
    top_v, pos = all_v.topk(min(k, sum(kk)), dim=1)
    return top_v, all_i.gather(1, pos)
