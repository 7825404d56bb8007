"""Dense Z-loss head ("zloss"): the reference every factored-head test compares against.

W [C_local, d'] is an ordinary ``nn.Parameter`` sharded over classes (d' = d + 1 with the
constant bias feature). The outputs o = W h are formed explicitly, the spherical statistics
(target outputs A, q = sum o^2, s = sum o) are summed over shards, and the loss of
:mod:`xclass.heads.zloss.losses` is evaluated on them, so any torch optimizer can train W.
Cost per step: O(B C_local d) time and a [B, C_local] logits tensor.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

from xclass.heads.base import HEADS, HeadOutput, TorchHeadOptimizer, head_lr, torch_optimizer
from xclass.heads.zloss.common import (ZParams, append_bias, class_range, gather_embeddings, gather_labels,
                                 init_rows, split_labels, sum_shards)
from xclass.heads.zloss.losses import batch_loss
from xclass.heads.zloss.predict import blockwise_topk, merge_shards_topk


def build_torch_optimizer(params: Any, optim_cfg: Any) -> TorchHeadOptimizer:
    """sgd (momentum, weight_decay as L2), adam, adamw, from optim_cfg (lr = head_lr)."""
    return TorchHeadOptimizer(torch_optimizer(params, optim_cfg, head_lr(optim_cfg)))


class DenseZLossHead(nn.Module):
    """Dense spherical-loss head. weight [C_local, d'] sharded over classes."""

    def __init__(self, num_classes: int, embedding_dim: int, ctx: Any, seed: int, p: ZParams) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim, self.p = num_classes, embedding_dim, p
        self.group, self.world_size = ctx.group, ctx.world_size
        self.start, self.end = class_range(num_classes, ctx.rank, ctx.world_size)
        dim = embedding_dim + (1 if p.bias_feature != 0 else 0)
        w0 = init_rows(num_classes, dim, self.start, self.end, p, seed, ctx.group)
        self.weight = nn.Parameter(w0)

    def _inputs(self, emb: torch.Tensor) -> torch.Tensor:
        return append_bias(emb, self.p.bias_feature).to(self.weight.dtype)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """emb [B_local, d] (batch-sharded), labels [B_local] or [B_local, K] (negative = pad)."""
        H = self._inputs(gather_embeddings(emb, self.group))          # [B, d'] replicated
        mask, idx, local = split_labels(gather_labels(labels, self.group),
                                        self.num_classes, self.start, self.end)
        O = H @ self.weight.t()                                        # [B, C_local]
        A = torch.where(local, O.gather(1, idx), torch.zeros((), dtype=O.dtype, device=O.device))
        stats = sum_shards(torch.cat([A, (O * O).sum(1, keepdim=True), O.sum(1, keepdim=True)], 1),
                           self.group)                                 # replicated [B, K + 2]
        K = A.shape[1]
        loss = batch_loss(self.p.loss, self.p.loss_params, stats[:, :K], mask,
                          stats[:, K], stats[:, K + 1], self.num_classes)
        return HeadOutput(loss=loss.to(emb.dtype), metrics={})

    def make_optimizer(self, optim_cfg: Any) -> TorchHeadOptimizer:
        return build_torch_optimizer([self.weight], optim_cfg)

    @torch.no_grad()
    def full_local_weight(self) -> torch.Tensor:
        """All d' columns of this rank's W rows [C_local, d'] (bias column last)."""
        return self.weight.detach().clone()

    @torch.no_grad()
    def local_weight(self) -> Tuple[torch.Tensor, int]:
        """Class vectors [C_local, d] (bias column dropped: see local_bias) and first class id."""
        return self.weight[:, : self.embedding_dim].detach().clone(), self.start

    @torch.no_grad()
    def local_bias(self) -> torch.Tensor:
        """Per-class bias [C_local] implied by the constant feature (zeros without one)."""
        if self.p.bias_feature == 0:
            return torch.zeros(self.end - self.start, dtype=self.weight.dtype, device=self.weight.device)
        return self.weight[:, -1] * self.p.bias_feature

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        """Raw scores [B, C_local] of replicated embeddings against this rank's classes."""
        return self._inputs(emb) @ self.weight.t()

    @torch.no_grad()
    def topk(self, emb: torch.Tensor, k: int, block: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
        """Global top-k (scores, class ids) [B, k] of replicated emb, blockwise; replicated."""
        H = self._inputs(emb)
        v, i = blockwise_topk(lambda lo, hi: H @ self.weight[lo:hi].t(), self.end - self.start,
                              H.shape[0], k, block, offset=self.start)
        return merge_shards_topk(v, i, k, self.group)


@HEADS.register("zloss")
def build_zloss_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int
                     ) -> DenseZLossHead:
    """Dense autograd Z-loss (or other spherical loss) head; any optimizer."""
    return DenseZLossHead(num_classes, embedding_dim, ctx, seed, ZParams.parse(getattr(head_cfg, "params", None)))
