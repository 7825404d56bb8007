"""One-vs-all classifier head "ova" (Renee-style), sharded over labels.

weight [C_local, d] sharded by label id (rank r owns ``class_range(L, r, W)``), init by global
label id (or from exported label embeddings: ``init_from``); bias: one scalar, replicated
(a shared offset never changes a ranking, so exporting ``weight`` as an inner-product index
ranks exactly like the classifier). Scores ``z = <q, w_l> + b`` (``normalize: true``:
``scale * cos(q, w_l) + b``).

Loss: per row, binary cross-entropy of every label (positives target 1, all other labels
target 0; ``pos_weight`` multiplies the positive terms), summed over labels and averaged over
the global rows that have at least one label; ``reduction: mean`` additionally divides by the
number of labels L (the per-(row, label) mean). Rows whose labels are all padding are ignored.

"On top of the dual encoder": ``init_from`` = the ``label_embeddings`` directory written by
``xclass export-index --run DUAL_RUN --head`` (Parquet ``id``, ``embedding``); the classifier
starts from the dual encoder's label vectors (scaled to ``init_scale`` norm), as in the
two-stage Siamese-then-classifier recipes (NGAME/DEXA). Gradient convention as in
xclass.heads.base (emb gets W * d loss / d emb_local; weight grads exact; bias grad summed).
"""
from __future__ import annotations

import glob
import math
import os
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xclass.parallel import collectives as C
from xclass.heads.base import HeadOutput
from xclass.heads.partition import class_range
from xclass.heads.sharded import init_class_rows
from xclass.losses.objectives import GradSumAcross
from xclass.heads.xmc.common import check_labels, gather_labels, local_positions
from xclass.heads.xmc.losses import ova_bce


def load_label_rows(path: str, start: int, stop: int, d: int) -> torch.Tensor:
    """Rows [start, stop) of exported label embeddings (file, directory or glob of Parquet)."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(path, "*.parquet"))) if os.path.isdir(path) else sorted(glob.glob(path))
    if not files:
        raise FileNotFoundError(f"ova init_from {path!r}: no Parquet label embeddings found")
    out = torch.full((stop - start, d), float("nan"), device="cpu")  # read on the host, moved with the module
    for f in files:
        t = pq.read_table(f, columns=["id", "embedding"])
        ids = t.column("id").to_numpy()
        keep = np.flatnonzero((ids >= start) & (ids < stop))
        if not len(keep):
            continue
        emb = t.column("embedding").combine_chunks().take(keep)
        x = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(keep), -1)
        if x.shape[1] != d:
            raise ValueError(f"{f}: embedding dim {x.shape[1]} != head embedding_dim {d}")
        out[torch.from_numpy(ids[keep] - start)] = torch.from_numpy(x.astype(np.float32))
    missing = torch.isnan(out[:, 0])
    if bool(missing.any()):
        raise ValueError(f"ova init_from {path!r}: label {start + int(missing.nonzero()[0])} missing")
    return out


class OvAHead(nn.Module):
    """Sharded one-vs-all classifier; see the module docstring for the loss."""

    def __init__(self, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int = 0,
                 normalize: bool = False, scale: float = 1.0, pos_weight: float = 1.0,
                 reduction: str = "sum", init_std: float = 0.01, bias_init: Optional[float] = None,
                 init_from: Optional[str] = None, init_scale: float = 1.0) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"ova: reduction {reduction!r} not in ('sum', 'mean')")
        self.ctx, self.seed = ctx, int(seed)
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self.normalize, self.scale, self.pos_weight = bool(normalize), float(scale), float(pos_weight)
        self.reduction = reduction
        self.start, self.stop = class_range(num_classes, ctx.rank, ctx.world_size)
        if init_from:
            rows = F.normalize(load_label_rows(init_from, self.start, self.stop, embedding_dim), dim=1) * init_scale
        else:
            rows = init_class_rows(self.start, self.stop, 1, embedding_dim, self.seed, init_std)
        self.weight = nn.Parameter(rows)
        # prior log-odds of one label among L (a few positives per row): BCE starts near its optimum
        b0 = -math.log(max(num_classes, 2)) if bias_init is None else float(bias_init)
        self.bias = nn.Parameter(torch.tensor([b0], device=rows.device))
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64, device=rows.device))
        self.active = None  # dense updates (optimizer contract)

    @property
    def group(self) -> Any:
        return self.ctx.group if self.ctx.world_size > 1 else None

    def _scores(self, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            return self.scale * (F.normalize(q.float(), dim=1) @ F.normalize(w, dim=1).t())
        return q.float() @ w.t()

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """emb [B_local, d] (batch-sharded); labels [B_local, K] global ids padded with -100."""
        labels = check_labels(emb, labels, self.embedding_dim, self.num_classes, "ova")
        emb_g = C.gather_global_batch(emb, self.group)
        labels_g = gather_labels(labels, self.group)
        valid_rows = (labels_g >= 0).any(1)
        pos_col = local_positions(labels_g, self.start, self.stop)
        logits = self._scores(emb_g, self.weight) + GradSumAcross.apply(self.bias, self.group)
        per = ova_bce(logits, pos_col, pos_weight=self.pos_weight, group=self.group, inplace=True)
        per = torch.where(valid_rows, per, torch.zeros_like(per))
        n = valid_rows.sum().clamp(min=1)
        denom = n * (self.num_classes if self.reduction == "mean" else 1)
        loss = per.sum() / denom
        return HeadOutput(loss=loss, metrics={"loss": loss.detach(), "valid_rows": n.detach()})

    def replicated_parameters(self) -> List[nn.Parameter]:
        """The scalar bias is replicated on every rank; clipping counts it once."""
        return [self.bias]

    def local_weight(self) -> Tuple[torch.Tensor, int]:
        """([C_local, d] classifier rows, first global label id); rank with --metric ip
        (or cosine when ``normalize``); the shared bias does not change rankings."""
        return self.weight.detach(), self.start

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        return self._scores(emb, self.weight) + self.bias

    def make_optimizer(self, optim_cfg: Any):
        from xclass.heads.xmc.optim import build_xmc_optimizer

        return build_xmc_optimizer(self, optim_cfg)

    def extra_repr(self) -> str:
        return (f"labels=[{self.start}, {self.stop}) of {self.num_classes}, d={self.embedding_dim}, "
                f"normalize={self.normalize}, reduction={self.reduction}, pos_weight={self.pos_weight}")
