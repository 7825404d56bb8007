"""The label tower of the dual encoder: label text (token bag) -> label embedding.

Replicated on every rank (same init from the seed, independent of world size); each rank
runs it only on its own label shard, so its parameter gradients are *partial* and the head
optimizer SUM-all-reduces them (see :mod:`xclass.heads.xmc.optim`). No BatchNorm: batch statistics
over a label shard would differ between world sizes.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn


class LabelTower(nn.Module):
    """Mean of token embeddings -> (Linear, ReLU)* -> Linear: [n labels] -> [n, d]."""

    def __init__(self, vocab_size: int, embedding_dim: int, token_dim: int = 128,
                 hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.bag = nn.EmbeddingBag(self.vocab_size, token_dim, mode="mean")  # empty bag -> 0
        layers, d_in = [], token_dim
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.ReLU()]
            d_in = h
        layers.append(nn.Linear(d_in, embedding_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """values int64 [T] token ids, offsets int64 [n + 1] (CSR) -> [n, d]."""
        return self.mlp(self.bag(values, offsets[:-1]))


class FeatureTower(nn.Module):
    """Label feature vectors (e.g. a frozen text encoder's embeddings of the label text) ->
    (Linear, ReLU)* -> Linear: [n, F] -> [n, d]."""

    def __init__(self, feature_dim: int, embedding_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        layers, d_in = [], int(feature_dim)
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.ReLU()]
            d_in = h
        layers.append(nn.Linear(d_in, embedding_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


def select_bags(values: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CSR sub-matrix of ``rows`` (int64 [m]): (values [T'], offsets [m + 1])."""
    lens = offsets[rows + 1] - offsets[rows]
    new_off = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=values.device)
    torch.cumsum(lens, 0, out=new_off[1:])
    total = int(new_off[-1])
    within = torch.arange(total, dtype=torch.int64, device=values.device) - torch.repeat_interleave(new_off[:-1], lens)
    return values[torch.repeat_interleave(offsets[rows], lens) + within], new_off
