"""Sparse-friendly encoder optimizer for embedding tables (``optim.sparse_embeddings: true``).

A dense optimizer over a ``V x D`` embedding table reads and writes all ``V`` rows (and two
``V x D`` Adam moments) every step, although a batch touches only the rows of its tokens. With
``sparse_embeddings`` every ``nn.Embedding`` / ``nn.EmbeddingBag`` of the encoder produces a
sparse gradient (``sparse=True``: a COO tensor over the touched rows) and is updated by
``torch.optim.SparseAdam``, which is *lazy* Adam: a step updates the touched rows' moments and
values only; untouched rows, and their moments, stay as they are. Bias correction uses the
table's step count. Every other parameter gets the optimizer named by ``optim.name``.

The table gets no weight decay (SparseAdam has none; decaying all rows would make the step
dense again). On a single step from a fresh state the touched rows equal dense Adam exactly.

Tensors: the table ``[V, D]`` is replicated over data-parallel ranks like every encoder
parameter; :func:`xclass.parallel.collectives.average_gradients` averages its sparse gradient
(the rows touched on any rank, summed and divided by the world size).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn


def embedding_tables(module: nn.Module) -> List[nn.Module]:
    """The ``nn.Embedding`` / ``nn.EmbeddingBag`` sub-modules of ``module`` with a trainable table."""
    return [m for m in module.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.weight.requires_grad]


class SplitOptimizer:
    """SparseAdam over the embedding tables + a dense torch optimizer over the rest.

    Quacks like a torch optimizer for the engine: ``param_groups`` (both optimizers' groups,
    so the schedule's ``g["lr"] = lr`` reaches both), ``step``, ``zero_grad``, ``state_dict``,
    ``load_state_dict``."""

    def __init__(self, sparse: Optional[torch.optim.Optimizer], dense: Optional[torch.optim.Optimizer]) -> None:
        self.sparse, self.dense = sparse, dense

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return [g for o in (self.sparse, self.dense) if o is not None for g in o.param_groups]

    def step(self) -> None:
        for o in (self.sparse, self.dense):
            if o is not None:
                o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in (self.sparse, self.dense):
            if o is not None:
                o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return {"sparse": None if self.sparse is None else self.sparse.state_dict(),
                "dense": None if self.dense is None else self.dense.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"sparse", "dense"}:
            raise ValueError("not a sparse_embeddings optimizer state (keys 'sparse', 'dense' expected)")
        for o, s in ((self.sparse, state["sparse"]), (self.dense, state["dense"])):
            if (o is None) != (s is None):
                raise ValueError("sparse_embeddings optimizer state: parameter split differs from this model")
            if o is not None:
                o.load_state_dict(s)


def make_split_optimizer(module: nn.Module, optim_cfg: Any) -> SplitOptimizer:
    """Switch the module's embedding tables to sparse gradients and build the optimizers:
    SparseAdam (lr, betas of ``optim_cfg``) for the tables, ``optim.name`` for the rest."""
    from xclass.heads.base import torch_optimizer

    name = str(optim_cfg.name).lower()
    if name not in ("adam", "adamw"):
        raise ValueError(f"optim.sparse_embeddings needs optim.name adam or adamw, got {name!r}")
    tables = embedding_tables(module)
    for m in tables:
        m.sparse = True
    table_ids = {id(m.weight) for m in tables}
    rest = [p for p in module.parameters() if id(p) not in table_ids]
    lr = float(optim_cfg.lr)
    betas = tuple(getattr(optim_cfg, "betas", (0.9, 0.999)) or (0.9, 0.999))
    sparse = torch.optim.SparseAdam([m.weight for m in tables], lr=lr, betas=betas) if tables else None
    dense = torch_optimizer(rest, optim_cfg, lr) if rest else None
    return SplitOptimizer(sparse, dense)

