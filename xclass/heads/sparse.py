"""Rows of a weight shard taken out of autograd for a truly sparse update (Partial FC, shortlists).

A head that scores only some rows of its weight shard takes them as a fresh leaf per forward
(``SampledRows.take``); the optimizer and the clipper read ``merged()``: the union of the rows of
every forward since the last ``clear()`` with their gradients summed. One forward per step gives
back its own (rows, leaf) unchanged; several (gradient accumulation over micro-batches, each with
its own sample) give the sorted union and the summed gradient, which is what a dense weight would
have accumulated at those rows. Rows outside the union get no gradient and no update.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

Rows = Tuple[torch.Tensor, torch.Tensor]  # (row ids [R] int64 sorted, leaf [R, d] with .grad)


class SampledRows:
    """The (row ids, leaf) pairs of the forwards of one optimizer step, for one weight shard."""

    def __init__(self) -> None:
        self._parts: List[Rows] = []

    def take(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[R, d] copy of ``weight[rows]``: a leaf that receives this forward's gradient (recorded
        only when grad mode is on, so evaluation forwards leave nothing behind)."""
        leaf = weight.detach().index_select(0, rows)
        if torch.is_grad_enabled():
            leaf.requires_grad_(True)
            self._parts.append((rows, leaf))
        return leaf

    def clear(self) -> None:
        self._parts = []

    def merged(self) -> Optional[Rows]:
        """(sorted union of rows [U], leaf [U, d] whose ``.grad`` is the summed gradient), or the
        latest part when no forward has a gradient yet, or None when nothing was taken.
        Merging replaces the parts by the merged one, so in-place changes to its gradient (clipping)
        are what the optimizer then reads."""
        done = [p for p in self._parts if p[1].grad is not None]
        if len(done) <= 1:
            return done[0] if done else (self._parts[-1] if self._parts else None)
        rows = torch.cat([r for r, _ in done])
        grads = torch.cat([leaf.grad for _, leaf in done])
        uniq, inv = torch.unique(rows, sorted=True, return_inverse=True)
        g = torch.zeros(uniq.numel(), grads.shape[1], dtype=grads.dtype, device=grads.device)
        g.index_add_(0, inv, grads)
        values = torch.empty_like(g)  # row values are not needed by the optimizer (it reads the weight)
        values.index_copy_(0, inv, torch.cat([leaf.detach() for _, leaf in done]))
        leaf = values.requires_grad_(True)
        leaf.grad = g
        self._parts = [(uniq, leaf)] + [p for p in self._parts if p[1].grad is None]
        return self._parts[0]
