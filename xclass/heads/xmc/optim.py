"""Optimizer of the XMC heads: :class:`~xclass.heads.optim.ShardedHeadOptimizer` (SGD-momentum
or AdamW, state sharded with the label rows, sparse rows under a shortlist, inf/NaN skip agreed
by all ranks) extended with the *replicated* label tower.

Why the tower needs a SUM all-reduce: every rank runs the tower on its own label shard only,
so its local gradient is the part of d loss / d theta that flows through that shard's label
vectors. The full gradient is the sum over shards; after the all-reduce every rank applies the
same update to identical parameters, so the replicas never diverge. The reduction happens once
per step, in ``sync_grads()`` (called by ``step()``; idempotent until ``zero_grad()``), so
gradient accumulation over micro-batches stays linear.
"""
from __future__ import annotations

from typing import Any, Iterable, List

import torch

from xclass.parallel.collectives import world_size
from xclass.heads.optim import ShardedHeadOptimizer, build_head_optimizer


class XmcHeadOptimizer(ShardedHeadOptimizer):
    """Updates ``head.weight`` (dense or the active rows), ``head.bias`` and ``head.tower``."""

    def __init__(self, head: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(head, *args, **kwargs)
        self._synced = False

    def _tower_params(self) -> List[Any]:
        tower = getattr(self.head, "tower", None)
        return [] if tower is None else list(tower.named_parameters())

    def _grads(self):
        out: List[Any] = []
        h = self.head
        if h.active is not None:
            rows, leaf = h.active
            out.append(("weight", h.weight, rows, leaf.grad))
        elif getattr(h, "weight", None) is not None:
            out.append(("weight", h.weight, None, h.weight.grad))
        if getattr(h, "bias", None) is not None:
            out.append(("bias", h.bias, None, h.bias.grad))
        out += [("tower." + n, p, None, p.grad) for n, p in self._tower_params()]
        return [o for o in out if o[3] is not None]

    def sync_grads(self) -> None:
        """SUM-all-reduce the tower's partial gradients over the head group (once per step)."""
        if self._synced:
            return
        self._synced = True
        grads = [p.grad for _, p in self._tower_params() if p.grad is not None]
        if not grads or world_size(self.head.group) == 1:
            return
        from xclass.parallel.collectives import all_reduce

        flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]), "sum", self.head.group)
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()

    def step(self) -> bool:
        self.sync_grads()
        return super().step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for _, p in self._tower_params():
            p.grad = None
        self._synced = False


def build_xmc_optimizer(head: Any, optim_cfg: Any, extra_groups: Iterable[Any] = ()) -> XmcHeadOptimizer:
    """Same config fields as :func:`xclass.heads.optim.build_head_optimizer`."""
    return build_head_optimizer(head, optim_cfg, extra_groups, cls=XmcHeadOptimizer)
