"""Dual-encoder head "dual_decoupled": DEXML's decoupled softmax over label-sharded embeddings.

The query tower is the run's encoder (``emb``); the label side lives here, sharded by label id
(rank r owns ``class_range(L, r, W)``). Label vectors ``e_l`` [C_local, d] come from

- ``label_repr: free``: a free per-label weight (sharded, init by global label id);
- ``label_repr: text``: the replicated :class:`~xclass.heads.xmc.tower.LabelTower` over the label's
  tokens in ``labels.parquet`` (run on this rank's shard only);
- ``label_repr: text+free``: tower output plus a free per-label residual initialised at 0.

Per step: all-gather the global query batch [B_g, d] (every rank scores every query against
its own labels, so every query sees every shard's negatives), score
``s = scale * cos(q, e)`` (or ``scale * <q, e>`` with ``normalize: false``), and apply
:func:`~xclass.heads.xmc.losses.decoupled_softmax` (2 all-reduces of O(B_g K)). With
``shortlist_k > 0`` each rank scores only its active labels: the batch's positives on the shard
plus the top-k of every query from a FAISS index of the shard's label embeddings, rebuilt
every ``shortlist_refresh`` steps; the loss is then the decoupled softmax restricted to the
union of active labels (in-batch + hard negatives), and only active label rows are encoded
and updated.

Gradient-scale convention (xclass.heads.base): loss = mean over global rows with >= 1 label,
replicated; ``emb`` receives W * d loss / d emb_local; free label rows get exact d loss / d W;
the tower's parameter gradients are per-shard partial sums that the head optimizer
SUM-all-reduces before stepping (so after ``step()`` they equal the single-process gradient).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from xclass.parallel import collectives as C
from xclass.heads.base import HeadOutput, host_step
from xclass.heads.partition import class_range
from xclass.heads.sharded import init_class_rows
from xclass.heads.sparse import SampledRows
from xclass.losses.seeding import mix_key
from xclass.heads.xmc.common import check_labels, gather_labels, local_positions
from xclass.heads.xmc.losses import decoupled_softmax
from xclass.heads.xmc.shortlist import Shortlist
from xclass.heads.xmc.tower import FeatureTower, LabelTower, select_bags

REPRS = ("free", "text", "text+free", "features", "features+free")


class DualDecoupledHead(nn.Module):
    """weight: [C_local, d] sharded (free / residual; None for ``text``); tower: replicated;
    label_values/label_offsets: CSR token bags of the shard (non-persistent buffers)."""

    def __init__(self, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int = 0,
                 label_repr: str = "free", scale: float = 20.0, normalize: bool = True,
                 init_std: float = 0.01, label_tokens: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 vocab_size: int = 0, token_dim: int = 128, hidden: Sequence[int] = (),
                 shortlist_k: int = 0, shortlist_refresh: int = 100, shortlist_index: str = "flat",
                 faiss_threads: int = 1, label_features: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if label_repr not in REPRS:
            raise ValueError(f"dual_decoupled: label_repr {label_repr!r} not in {REPRS}")
        self.ctx, self.seed, self.label_repr = ctx, int(seed), label_repr
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self.scale, self.normalize = float(scale), bool(normalize)
        self.start, self.stop = class_range(num_classes, ctx.rank, ctx.world_size)
        self.tower: Optional[nn.Module] = None
        if label_repr.startswith("features"):
            self._init_feature_tower(label_features, hidden)
        elif label_repr != "free":
            self._init_tower(label_tokens, vocab_size, token_dim, hidden)
        self.weight: Optional[nn.Parameter] = None
        if label_repr not in ("text", "features"):
            std = init_std if label_repr == "free" else 0.0
            rows = init_class_rows(self.start, self.stop, 1, embedding_dim, self.seed, std)
            # with a shortlist only active rows are touched: Partial-FC style leaf (see optim)
            self.weight = nn.Parameter(rows, requires_grad=shortlist_k <= 0)
        self.shortlist = Shortlist(shortlist_k, shortlist_refresh, shortlist_index, faiss_threads) \
            if shortlist_k > 0 else None
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64, device=getattr(ctx, "device", None)))
        self.sampled = SampledRows()  # shortlist: the free rows scored by each forward of this step
        self.last_active: Optional[torch.Tensor] = None  # global label ids scored last step

    def _init_tower(self, label_tokens, vocab_size: int, token_dim: int, hidden: Sequence[int]) -> None:
        if label_tokens is None or vocab_size < 1:
            raise ValueError(f"dual_decoupled: label_repr {self.label_repr!r} needs label tokens and vocab_size "
                             "(the factory reads them from the dataset's labels.parquet / meta.json)")
        values, offsets = label_tokens
        if offsets.numel() != self.stop - self.start + 1:
            raise ValueError(f"dual_decoupled: label_tokens offsets cover {offsets.numel() - 1} labels, "
                             f"shard has {self.stop - self.start}")
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= vocab_size):
            raise ValueError(f"dual_decoupled: label token id outside [0, vocab_size={vocab_size})")
        self.register_buffer("label_values", values.to(torch.int64), persistent=False)
        self.register_buffer("label_offsets", offsets.to(torch.int64), persistent=False)
        with torch.random.fork_rng(devices=[]):  # same tower on every rank and world size
            torch.manual_seed(mix_key(self.seed, 0x70E4))
            self.tower = LabelTower(vocab_size, self.embedding_dim, token_dim, hidden)

    def _init_feature_tower(self, feats: Optional[torch.Tensor], hidden: Sequence[int]) -> None:
        n = self.stop - self.start
        if feats is None or feats.dim() != 2 or feats.shape[0] != n:
            raise ValueError(f"dual_decoupled: label_repr {self.label_repr!r} needs label_features [{n}, F] "
                             "(the factory reads labels.parquet's 'features' column)")
        self.register_buffer("label_feats", feats.float(), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_key(self.seed, 0x70E5))
            self.tower = FeatureTower(feats.shape[1], self.embedding_dim, hidden)

    @property
    def active(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(rows, leaf) of the free label rows with this step's gradient (shortlist only; the
        micro-batches of a step merged), None when the weight is a dense parameter."""
        return self.sampled.merged()

    @property
    def group(self) -> Any:
        return self.ctx.group if self.ctx.world_size > 1 else None

    # ------------------------------------------------------------------ label side
    def label_embeddings(self, cols: Optional[torch.Tensor] = None, track: bool = False) -> torch.Tensor:
        """[R, d] label vectors of local rows ``cols`` (sorted int64; None = the whole shard).
        ``track``: with a shortlist, the free rows become a leaf recorded in ``self.sampled``."""
        out = None
        if self.tower is not None and self.label_repr.startswith("features"):
            out = self.tower(self.label_feats if cols is None else self.label_feats.index_select(0, cols))
        elif self.tower is not None:
            v, o = (self.label_values, self.label_offsets) if cols is None else \
                select_bags(self.label_values, self.label_offsets, cols)
            out = self.tower(v, o)
        if self.weight is not None:
            if cols is None or self.weight.requires_grad:
                w = self.weight if cols is None else self.weight.index_select(0, cols)
            else:
                w = self.sampled.take(self.weight, cols) if track else self.weight.detach().index_select(0, cols)
            out = w if out is None else out + w
        return out

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1) if self.normalize else x.float()

    @torch.no_grad()
    def _active_cols(self, emb_g: torch.Tensor, pos_local: torch.Tensor) -> torch.Tensor:
        """Sorted local rows scored this step: the batch's positives on this shard plus each
        query's shortlist (refreshed snapshot of the shard's label embeddings)."""
        sl = self.shortlist
        if sl.stale(host_step(self)):
            sl.rebuild(self._prep(self.local_weight()[0]), host_step(self))
        idx = sl.search(self._prep(emb_g.detach())).to(pos_local.device)
        cand = torch.cat([idx.reshape(-1), pos_local.reshape(-1)])
        return torch.unique(cand[cand >= 0])

    # ------------------------------------------------------------------ forward
    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """emb [B_local, d] (batch-sharded); labels [B_local, K] global ids padded with -100."""
        labels = check_labels(emb, labels, self.embedding_dim, self.num_classes, "dual_decoupled")
        emb_g = C.gather_global_batch(emb, self.group)
        labels_g = gather_labels(labels, self.group)
        valid = labels_g >= 0
        cols = None
        if self.shortlist is not None and self.training:
            cols = self._active_cols(emb_g, local_positions(labels_g, self.start, self.stop))
            self.last_active = cols + self.start
        pos_col = local_positions(labels_g, self.start, self.stop, cols)
        e = self.label_embeddings(cols, track=True)
        logits = self.scale * (self._prep(emb_g) @ self._prep(e).t())
        per = decoupled_softmax(logits, pos_col, valid, group=self.group, inplace=True)
        n = valid.any(1).sum().clamp(min=1)
        loss = per.sum() / n
        metrics = {"loss": loss.detach(), "valid_rows": n.detach()}
        if cols is not None:
            metrics["active_labels"] = C.all_reduce(torch.tensor(float(cols.numel()), device=cols.device), "sum", self.group)
        return HeadOutput(loss=loss, metrics=metrics)

    # ------------------------------------------------------------------ contract
    @torch.no_grad()
    def replicated_parameters(self) -> List[nn.Parameter]:
        """The label tower is replicated on every rank; clipping counts it once (after sync_grads)."""
        return [] if self.tower is None else list(self.tower.parameters())

    def local_weight(self) -> Tuple[torch.Tensor, int]:
        """([C_local, d] label embeddings of this shard (tower output when there is a tower),
        first global label id). Score with cosine when ``normalize`` (export --metric cosine)."""
        n = self.stop - self.start
        if self.tower is None:
            return self.weight.detach().float(), self.start
        dev = self.tower.mlp[-1].weight.device
        chunks = [self.label_embeddings(torch.arange(a, min(a + 65536, n), device=dev)) for a in range(0, n, 65536)]
        return torch.cat(chunks).float(), self.start

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, C_local] fp32 scores of replicated embeddings (the training scores)."""
        return self.scale * (self._prep(emb) @ self._prep(self.local_weight()[0]).t())

    def make_optimizer(self, optim_cfg: Any):
        from xclass.heads.xmc.optim import build_xmc_optimizer

        return build_xmc_optimizer(self, optim_cfg)

    def extra_repr(self) -> str:
        return (f"label_repr={self.label_repr}, labels=[{self.start}, {self.stop}) of {self.num_classes}, "
                f"d={self.embedding_dim}, scale={self.scale}, normalize={self.normalize}, "
                f"shortlist_k={self.shortlist.k if self.shortlist else 0}")
