"""Factored spherical-loss head ("zloss_efficient"): exact SGD on W in O(m d^2 + m K d + m^2 d).

Each rank holds the rows of V for its classes and its own small factors (U, Uinv, omega,
Q_r = W_r^T W_r, w_bar_r = W_r^T 1), see :mod:`xclass.heads.zloss.factored`. Per step only
per-example quantities cross the network (H [B, d] all-gather, stats [B, K + 2] and
dL/dH [B, d] all-reduces): communication is independent of the number of classes.

Training protocol (docs/zloss.md, note 8)::

    out = head(emb, labels); out.loss.backward()   # exact dL/d emb; records (H, gA, gq, gs)
    opt = head.make_optimizer(cfg.optim)           # plain SGD, scalar lr (settable), exact L2
    opt.step()                                     # W <- W - lr (dL/dW + wd W), O(m d^2)
    opt.zero_grad()

Several backward() calls before one step() accumulate (micro-batches): all are taken at
the same old W, exactly like summed gradients. The update uses the weight that multiplies
the loss in backward (grad_output), so do not backward an AMP-scaled loss through it.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from xclass.heads.base import HEADS, HeadOutput, advance_step, head_lr, host_step
from xclass.heads.zloss import factored as F
from xclass.heads.zloss import maintenance as mt
from xclass.heads.zloss.common import (ZParams, append_bias, class_range, gather_embeddings, gather_labels,
                                 init_rows, split_labels, sum_shards)
from xclass.heads.zloss.losses import batch_loss
from xclass.heads.zloss.predict import blockwise_topk, merge_shards_topk


class _FactoredStats(torch.autograd.Function):
    """H [B, d'] -> this shard's float64 (A [B, K], q [B], s [B]), three outputs so that one process
    needs no concatenation and no slice backward (note 9).
    backward returns this shard's dL/dH (exact, O(B d^2)) and records the step inputs."""

    @staticmethod
    def forward(ctx, H: torch.Tensor, head: "FactoredZLossHead", idx: torch.Tensor,  # type: ignore[override]
                local: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H64 = H.detach().double()
        A, q, s, HQ = F.forward_stats(head, H64, idx, local)
        ctx.head, ctx.H64, ctx.idx, ctx.local, ctx.HQ = head, H64, idx, local, HQ
        ctx.in_dtype, ctx.version = H.dtype, host_step(head, "n_updates")
        return A, q, s

    @staticmethod
    def backward(ctx, gA: torch.Tensor, gq: torch.Tensor, gs: torch.Tensor):  # type: ignore[override]
        head = ctx.head
        if host_step(head, "n_updates") != ctx.version:
            raise RuntimeError("zloss_efficient: backward after an optimizer step on the same forward")
        gA, gq, gs = gA.double(), gq.double(), gs.double()   # unused outputs arrive as zeros
        gA = torch.where(ctx.local, gA, torch.zeros_like(gA))
        gradH, Zh = F.grad_h(head, ctx.H64, ctx.idx, gA, gq, gs, ctx.HQ)
        head._pending.append((ctx.H64, ctx.idx, ctx.local, gA, gq, gs, gradH, Zh))
        return gradH.to(ctx.in_dtype), None, None, None


def _sum_stats(A: torch.Tensor, q: torch.Tensor, s: torch.Tensor, group: Any, world_size: int
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-shard (A [B, K], q [B], s [B]) -> their sums over class shards, replicated: one
    all-reduce of [B, K + 2]; unchanged for one process."""
    if world_size == 1:
        return A, q, s
    K = A.shape[1]
    stats = sum_shards(torch.cat([A, q[:, None], s[:, None]], 1), group)
    return stats[:, :K], stats[:, K], stats[:, K + 1]


class FactoredSGD:
    """Plain SGD with scalar (schedulable) ``lr`` and exact L2 ``weight_decay`` for the head."""

    def __init__(self, head: "FactoredZLossHead", lr: float, weight_decay: float = 0.0) -> None:
        self.head, self.lr, self.weight_decay = head, float(lr), float(weight_decay)

    def step(self) -> None:
        self.head.apply_update(self.lr, self.weight_decay)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.head._pending.clear()

    def state_dict(self) -> Dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.lr, self.weight_decay = float(state["lr"]), float(state["weight_decay"])


class FactoredZLossHead(nn.Module):
    """Spherical-loss head with W = V U + 1 omega^T kept factored. Buffers (all in the
    state_dict): V [C_local, d'] sharded; U, Uinv, Q [d', d'], omega, wbar [d'] (float64,
    per shard); n_updates (scalar int64, drives maintenance). No nn.Parameters: the head
    stays out of data-parallel engines and generic optimizers."""

    def __init__(self, num_classes: int, embedding_dim: int, ctx: Any, seed: int, p: ZParams,
                 block: int = 65536) -> None:
        super().__init__()
        if num_classes < ctx.world_size:
            raise ValueError(f"zloss_efficient: num_classes {num_classes} < world size {ctx.world_size}")
        self.num_classes, self.embedding_dim, self.p, self.block = num_classes, embedding_dim, p, block
        self.group, self.world_size = ctx.group, ctx.world_size
        self.start, self.end = class_range(num_classes, ctx.rank, ctx.world_size)
        dim = embedding_dim + (1 if p.bias_feature != 0 else 0)
        w0 = init_rows(num_classes, dim, self.start, self.end, p, seed, ctx.group)
        dev = w0.device  # the d x d state lives with the class rows
        eye = torch.eye(dim, dtype=torch.float64, device=dev)
        self.register_buffer("V", w0)
        for name, val in (("U", eye), ("Uinv", eye.clone()), ("omega", torch.zeros(dim, dtype=torch.float64, device=dev)),
                          ("Q", torch.zeros(dim, dim, dtype=torch.float64, device=dev)),
                          ("wbar", torch.zeros(dim, dtype=torch.float64, device=dev)),
                          ("n_updates", torch.zeros((), dtype=torch.int64, device=dev))):
            self.register_buffer(name, val)
        mt.resync(self, block)   # Q = W0^T W0, w_bar = W0^T 1 accumulated in float64
        self._pending: List[Tuple[torch.Tensor, ...]] = []
        self.dense_steps = 0          # how often the singular-C guard fell back (diagnostic)

    def _inputs(self, emb: torch.Tensor) -> torch.Tensor:
        return append_bias(emb, self.p.bias_feature)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """emb [B_local, d] (batch-sharded), labels [B_local] or [B_local, K] (negative = pad)."""
        H = self._inputs(gather_embeddings(emb, self.group))         # [B, d'] replicated
        mask, idx, local = split_labels(gather_labels(labels, self.group),
                                        self.num_classes, self.start, self.end)
        A, q, s = _sum_stats(*_FactoredStats.apply(H, self, idx, local), self.group,
                             self.world_size)
        loss = batch_loss(self.p.loss, self.p.loss_params, A, mask, q, s, self.num_classes)
        return HeadOutput(loss=loss.to(emb.dtype), metrics={})

    def _take_pending(self) -> Tuple[torch.Tensor, ...]:
        """Concatenate the recorded micro-batches (K padded with non-local entries); one
        micro-batch (the usual case) is returned as recorded, without copies."""
        if len(self._pending) == 1:
            return self._pending.pop()
        K = max(p[1].shape[1] for p in self._pending)

        def pad(x: torch.Tensor, fill: Any) -> torch.Tensor:
            extra = K - x.shape[1]
            return x if extra == 0 else torch.cat([x, x.new_full((x.shape[0], extra), fill)], 1)

        H = torch.cat([p[0] for p in self._pending])
        idx = torch.cat([pad(p[1], 0) for p in self._pending])
        local = torch.cat([pad(p[2], False) for p in self._pending])
        gA = torch.cat([pad(p[3], 0.0) for p in self._pending])
        gq = torch.cat([p[4] for p in self._pending])
        gs = torch.cat([p[5] for p in self._pending])
        gradH = torch.cat([p[6] for p in self._pending])
        Zh = torch.cat([p[7] for p in self._pending])
        self._pending.clear()
        return H, idx, local, gA, gq, gs, gradH, Zh

    @torch.no_grad()
    def apply_update(self, lr: float, weight_decay: float = 0.0) -> None:
        """One exact SGD step on W from the gradients recorded since the last step. lr == 0
        or nothing recorded: no change, maintenance counter not advanced."""
        if not self._pending or lr == 0:
            self._pending.clear()
            return
        H, idx, local, gA, gq, gs, gradH, Zh = self._take_pending()
        if F.sgd_update(self, H, idx, local, gA, gq, gs, float(lr), float(weight_decay),
                        self.p.guard_tau, self.block, pre=(gradH, Zh)):
            self.dense_steps += 1
        advance_step(self, "n_updates")
        mt.maintain(self, host_step(self, "n_updates"), self.p.stabilize_period, self.p.sv_band, self.block)

    def make_optimizer(self, optim_cfg: Any) -> FactoredSGD:
        """Plain SGD on W with lr = head_lr(optim_cfg) and optim_cfg.weight_decay (L2). Momentum
        and adaptive optimizers cannot be applied to the factored W; they still apply to the encoder."""
        name = str(getattr(optim_cfg, "name", "sgd")).lower()
        if name != "sgd" or float(getattr(optim_cfg, "momentum", 0.0) or 0.0) != 0.0:
            warnings.warn(f"zloss_efficient: the head uses plain SGD (optim.name={name!r} and momentum "
                          "apply to the encoder only)", stacklevel=2)
        return FactoredSGD(self, head_lr(optim_cfg), float(getattr(optim_cfg, "weight_decay", 0.0) or 0.0))

    @torch.no_grad()
    def resync(self) -> None:
        """Recompute Q and w_bar from the factors (O(C_local d^2)); W unchanged."""
        mt.resync(self, self.block)

    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:  # type: ignore[override]
        if self.p.resync_on_save and not self._pending:
            self.resync()   # checkpoints carry drift-free Q, w_bar (docs/zloss.md, note 6)
        return super().state_dict(*args, **kwargs)

    @torch.no_grad()
    def merge_shards(self, pieces: List[Tuple[int, int, Dict[str, Any]]]) -> Dict[str, Any]:
        """Re-split a checkpoint saved at another world size (hook of xclass.train.reshard):
        pieces are (first class, end class, {"head": state_dict, "optimizer": ...}) of the
        saved shards overlapping this rank. Each shard has its own factors, so its W rows are
        materialised (float64) and this rank restarts unfactored (U = I, omega = 0)."""
        rows = []
        for a, b, piece in sorted(pieces, key=lambda t: t[0]):
            sd = piece["head"]
            lo, hi = max(a, self.start), min(b, self.end)
            if lo < hi:
                rows.append(sd["V"][lo - a:hi - a].double() @ sd["U"] + sd["omega"])
        W = torch.cat(rows) if rows else torch.zeros(0, self.V.shape[1], dtype=torch.float64, device=self.V.device)
        if W.shape[0] != self.end - self.start:
            raise ValueError(f"zloss_efficient: checkpoint pieces cover {W.shape[0]} of classes "
                             f"[{self.start}, {self.end})")
        V = W.to(self.V.dtype)
        Wd = V.double()
        eye = torch.eye(V.shape[1], dtype=torch.float64, device=V.device)
        head = {"V": V, "U": eye, "Uinv": eye.clone(),
                "omega": torch.zeros(V.shape[1], dtype=torch.float64, device=V.device),
                "Q": Wd.t() @ Wd, "wbar": Wd.sum(0), "n_updates": pieces[0][2]["head"]["n_updates"].clone()}
        return {"head": head, "optimizer": pieces[0][2]["optimizer"]}

    @torch.no_grad()
    def full_local_weight(self) -> torch.Tensor:
        """This rank's W rows with all d' columns, float64 [C_local, d'] (bias column last)."""
        return torch.cat([mt.materialise(self, lo, lo + self.block)
                          for lo in range(0, self.V.shape[0], self.block)])

    @torch.no_grad()
    def local_weight(self) -> Tuple[torch.Tensor, int]:
        """Class vectors [C_local, d] in V's dtype (bias column dropped: see local_bias), first id."""
        return self.full_local_weight()[:, : self.embedding_dim].to(self.V.dtype), self.start

    @torch.no_grad()
    def local_bias(self) -> torch.Tensor:
        """Per-class bias [C_local] implied by the constant feature (zeros without one)."""
        if self.p.bias_feature == 0:
            return torch.zeros(self.V.shape[0], dtype=self.V.dtype, device=self.V.device)
        return (self.full_local_weight()[:, -1] * self.p.bias_feature).to(self.V.dtype)

    def _score_block(self, H: torch.Tensor):
        Ht = (H.double() @ self.U.t()).to(self.V.dtype)          # o = V (U h) + omega . h
        ho = (H.double() @ self.omega).to(self.V.dtype)[:, None]
        return lambda lo, hi: Ht @ self.V[lo:hi].t() + ho

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        """Raw scores [B, C_local] of replicated embeddings, without materialising W."""
        return self._score_block(self._inputs(emb))(0, self.V.shape[0])

    @torch.no_grad()
    def topk(self, emb: torch.Tensor, k: int, block: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
        """Global top-k (scores, class ids) [B, k] of replicated emb, blockwise; replicated."""
        H = self._inputs(emb)
        v, i = blockwise_topk(self._score_block(H), self.V.shape[0], H.shape[0], k, block, self.start, self.V.device)
        return merge_shards_topk(v, i, k, self.group)


@HEADS.register("zloss_efficient")
def build_zloss_efficient_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int
                               ) -> FactoredZLossHead:
    """Factored exact spherical-loss head (plain SGD on W, any optimizer on the encoder)."""
    return FactoredZLossHead(num_classes, embedding_dim, ctx, seed, ZParams.parse(getattr(head_cfg, "params", None)))
