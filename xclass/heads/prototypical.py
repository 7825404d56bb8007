"""Angular prototypical loss (the metric-learning recipe of voxceleb_trainer) as a batch-level head,
and a combined margin + angular prototypical head.

Registered in HEADS:
- ``"angproto"``: the loss alone. No class vectors: the "classes" are the speakers present in the
  (global) batch.
- ``"margin_angproto"``: a sharded margin head (``head.margin``, e.g. ``aam`` with warm-up) plus
  ``ap_weight`` times the angular prototypical loss on the same embeddings.

The loss on a batch (``angproto_loss``): rows are grouped by label; a speaker with >= 2 rows gives
one *query* (its first row in batch order) and one *prototype* (the mean of its other rows' raw
embeddings, as voxceleb_trainer averages ``x[:, 1:]``). With N such speakers,
``logits[i, j] = w * cos(query_i, proto_j) + b`` (w clamped to >= 1e-6) and the loss is the mean
over queries of the cross-entropy with target i. **Speakers with a single row in the batch are
skipped** (they have no prototype); a batch with no speaker of >= 2 rows gives loss 0. With the
default shuffled reader the number of usable speakers per batch depends on batch size vs number of
speakers; ``data.sampler: m_per_class`` (xclass/data/grouping.py) makes batches of M rows per
speaker so that every row counts.

Distribution (world size W): the head all-gathers the batch (``all_gather_with_grad``) and every
rank computes the same loss on the concatenated global batch, so the loss equals the
single-process loss on that batch. Each rank back-propagates the full loss, and the all-gather
backward *sums* the W identical gradients of this rank's rows: the encoder receives
``W * d loss / d emb_local``, exactly the gradient-scale convention of ``xclass.heads.base``.
The scalars w, b are replicated and get the exact ``d loss / d w`` on every rank (identical), so
they stay identical without averaging.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from xclass.config_types import ConfigError
from xclass.parallel import collectives as C
from xclass.heads.base import HEADS, IGNORE_INDEX, HeadOutput, TorchHeadOptimizer, head_lr
from xclass.heads.optim import build_head_optimizer

AP_KEYS = ("ap_weight", "init_w", "init_b")


def prototypes(emb: torch.Tensor, labels: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and prototypes of the speakers with >= 2 rows, in static shapes.

    emb [B, d] (replicated global batch), labels [B] int64 (IGNORE_INDEX rows take no part).
    Returns (queries [B, d], protos [B, d], valid [B] bool): one slot per possible speaker;
    the N valid slots come first, ordered by each speaker's first row in the batch, and the
    other B - N slots hold zeros. Every shape depends on B only, so nothing here reads the
    device (no ``torch.unique``, no boolean indexing): a steady step stays free of host syncs.
    """
    n, dev = labels.shape[0], labels.device
    keep = labels != IGNORE_INDEX
    pos = torch.arange(n, device=dev)
    if n == 0:
        return emb[:0], emb[:0], keep
    # speaker slot of every row: rank of its label among the sorted distinct labels
    lab = torch.where(keep, labels, torch.full_like(labels, torch.iinfo(torch.int64).max))
    s_lab, s_idx = torch.sort(lab, stable=True)
    change = torch.ones(n, dtype=torch.bool, device=dev)
    change[1:] = s_lab[1:] != s_lab[:-1]
    slot = torch.empty_like(pos).scatter_(0, s_idx, torch.cumsum(change.long(), 0) - 1)
    first = torch.full((n,), n, dtype=torch.int64, device=dev).scatter_reduce(0, slot, pos, reduce="amin")
    counts = torch.zeros(n, dtype=torch.int64, device=dev).scatter_add(0, slot, keep.long())
    is_query = pos == first[slot]
    support = torch.zeros(n, emb.shape[1], dtype=emb.dtype, device=dev)
    support = support.index_add(0, slot, emb * (keep & ~is_query).unsqueeze(1).to(emb.dtype))
    ok = counts >= 2
    order = torch.argsort(torch.where(ok, first, n + pos))  # valid speakers first, by first row
    queries = emb[first.clamp(max=n - 1)] * ok.unsqueeze(1).to(emb.dtype)
    protos = support / (counts - 1).clamp(min=1).unsqueeze(1).to(emb.dtype)
    return queries[order], protos[order], ok[order]


def angproto_loss(emb: torch.Tensor, labels: torch.Tensor, w: torch.Tensor,
                  b: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Angular prototypical loss of one (global) batch. emb [B, d]; labels [B]; w, b scalars [1].

    Returns (loss scalar, metrics: ap_speakers = N, ap_acc = top-1 accuracy of the queries); all
    device tensors. The logits are [B, B] over every slot of :func:`prototypes`; invalid columns
    get a finite -1e30 (their softmax weight is exactly 0) and invalid rows weight 0, so the loss
    equals the CE over the N x N valid block, and N = 0 gives 0 with zero gradients."""
    q, p, valid = prototypes(emb.float(), labels.to(torch.int64))
    nb = q.shape[0]
    vf = valid.float()
    n = vf.sum()
    cos = F.normalize(q, dim=1) @ F.normalize(p, dim=1).t()
    logits = (w.clamp(min=1e-6) * cos + b).masked_fill(~valid.unsqueeze(0), -1e30)
    target = torch.arange(nb, device=emb.device)
    ce = F.cross_entropy(logits, target, reduction="none") if nb else logits.sum(1)
    loss = (ce * vf).sum() / n.clamp(min=1.0) + (w.sum() + b.sum()) * 0.0
    acc = ((logits.detach().argmax(1) == target).float() * vf).sum() / n.clamp(min=1.0)
    return loss, {"ap_speakers": n, "ap_acc": acc}


def scalar_optimizer(params: Any, optim_cfg: Any) -> TorchHeadOptimizer:
    """SGD-momentum / AdamW for the replicated scalars (w, b); no weight decay (as
    voxceleb_trainer's loss parameters get none). ``lr`` is settable for the loop's schedule."""
    name = str(optim_cfg.name).lower()
    lr = head_lr(optim_cfg)
    if name == "sgd":
        return TorchHeadOptimizer(torch.optim.SGD(
            params, lr=lr, momentum=float(getattr(optim_cfg, "momentum", 0.9) or 0.0)))
    if name == "adamw":
        return TorchHeadOptimizer(torch.optim.AdamW(params, lr=lr, weight_decay=0.0))
    raise ValueError(f"head optimizer {name!r} not in ('sgd', 'adamw')")


class AngularPrototypicalHead(nn.Module):
    """Batch-level head. w, b: [1] replicated Parameters (init 10, -5 as in voxceleb_trainer)."""

    def __init__(self, *, num_classes: int, embedding_dim: int, ctx: Any, init_w: float = 10.0,
                 init_b: float = -5.0) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim, self.ctx = int(num_classes), int(embedding_dim), ctx
        dev = getattr(ctx, "device", None)  # the run's device (ParallelContext.device)
        self.w = nn.Parameter(torch.tensor([float(init_w)], device=dev))
        self.b = nn.Parameter(torch.tensor([float(init_b)], device=dev))

    @property
    def group(self) -> Any:
        return self.ctx.group if self.ctx.world_size > 1 else None

    def gathered_loss(self, emb: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """emb [B_local, d] sharded over the batch -> loss on the global batch (replicated)."""
        if emb.dim() != 2 or emb.shape[1] != self.embedding_dim:
            raise ValueError(f"head: embeddings must be [B, {self.embedding_dim}], got {tuple(emb.shape)}")
        if labels.dim() != 1 or labels.shape[0] != emb.shape[0] or labels.is_floating_point():
            raise ValueError(f"head: labels must be an integer [B={emb.shape[0]}] tensor, got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        # no W scaling here: every rank back-propagates the same full loss and the gather's
        # backward sums them, which already is W * d loss / d emb_local (see module docstring)
        emb_g = C.all_gather_with_grad(emb, self.group)
        labels_g = C.all_gather_nograd(labels.to(torch.int64), self.group)
        return angproto_loss(emb_g, labels_g, self.w, self.b)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        loss, m = self.gathered_loss(emb, labels)
        return HeadOutput(loss=loss, metrics={"loss": loss.detach(), **m, "ap_w": self.w.detach()[0]})

    def replicated_parameters(self) -> List[nn.Parameter]:
        """w and b are replicated on every rank; clipping counts them once."""
        return [self.w, self.b]

    def local_weight(self) -> Tuple[torch.Tensor, int]:
        """No class vectors: an empty [0, d] shard."""
        return torch.zeros(0, self.embedding_dim, device=self.w.device), 0

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.new_zeros(emb.shape[0], 0)

    def make_optimizer(self, optim_cfg: Any) -> TorchHeadOptimizer:
        return scalar_optimizer([self.w, self.b], optim_cfg)


def scalars_may_step(ok: Any, ap_opt: TorchHeadOptimizer) -> bool:
    """Whether the (w, b) optimizer steps after the margin optimizer returned ``ok``.

    On the CPU ``ok`` is read on the host (free there) and a skipped margin step skips (w, b)
    too. On an accelerator nothing is read: the gradients of (w, b) are multiplied by ``ok`` on
    the device, so a skipped step becomes a zero-gradient step for them, as for the encoder
    (xclass.train.nonfinite)."""
    if not torch.is_tensor(ok) or ok.device.type == "cpu":
        return bool(ok)
    for group in ap_opt.opt.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(ok.to(p.grad.dtype))
    return True


class CombinedOptimizer:
    """The margin head's sharded optimizer + the scalar optimizer of w, b, stepped together."""

    def __init__(self, margin_opt: Any, ap_opt: TorchHeadOptimizer) -> None:
        self.margin_opt, self.ap_opt = margin_opt, ap_opt

    @property
    def lr(self) -> float:
        return float(self.margin_opt.lr)

    @lr.setter
    def lr(self, value: float) -> None:
        self.margin_opt.lr = float(value)
        self.ap_opt.lr = float(value)

    def step(self) -> bool:
        ok = self.margin_opt.step()  # a 0-dim bool device tensor (see ShardedHeadOptimizer.step)
        if not scalars_may_step(ok, self.ap_opt):  # the margin optimizer skipped a non-finite step
            self.ap_opt.zero_grad()
            return False
        stepped = self.ap_opt.step()
        self.ap_opt.zero_grad()
        return stepped

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.margin_opt.zero_grad(set_to_none)
        self.ap_opt.zero_grad(set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return {"margin": self.margin_opt.state_dict(), "angproto": self.ap_opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.margin_opt.load_state_dict(state["margin"])
        self.ap_opt.load_state_dict(state["angproto"])


class MarginAngprotoHead(nn.Module):
    """loss = margin head loss (sharded over classes) + ap_weight * angular prototypical loss.
    Both parts follow the gradient-scale convention, so their sum does."""

    def __init__(self, margin_head: nn.Module, ap: AngularPrototypicalHead, ap_weight: float = 1.0) -> None:
        super().__init__()
        self.margin_head, self.ap, self.ap_weight = margin_head, ap, float(ap_weight)
        self.num_classes = margin_head.num_classes

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        out = self.margin_head(emb, labels)
        ap_loss, m = self.ap.gathered_loss(emb, labels)
        loss = out.loss + self.ap_weight * ap_loss
        return HeadOutput(loss=loss, metrics={**out.metrics, "loss": loss.detach(),
                                              "margin_loss": out.loss.detach(), "ap_loss": ap_loss.detach(), **m})

    @property
    def active(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The margin head's Partial-FC rows and their gradient (None without sampling)."""
        return getattr(self.margin_head, "active", None)

    def replicated_parameters(self) -> List[nn.Parameter]:
        return list(self.margin_head.replicated_parameters()) + self.ap.replicated_parameters()

    def local_weight(self) -> Tuple[torch.Tensor, int]:
        return self.margin_head.local_weight()

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        return self.margin_head.scores(emb)

    def make_optimizer(self, optim_cfg: Any) -> CombinedOptimizer:
        return CombinedOptimizer(build_head_optimizer(self.margin_head, optim_cfg),
                                 self.ap.make_optimizer(optim_cfg))


def _split_params(head_cfg: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    params = dict(getattr(head_cfg, "params", None) or {})
    return {k: params.pop(k) for k in AP_KEYS if k in params}, params


@HEADS.register("angproto")
def angproto_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int) -> nn.Module:
    """head.params: init_w (10), init_b (-5). head.margin / margin_params are not used."""
    ap, rest = _split_params(head_cfg)
    unknown = sorted(set(rest) | ({"ap_weight"} & set(ap)))
    if unknown:
        raise ConfigError(f"unknown key 'head.params.{unknown[0]}' for head 'angproto' (known: init_w, init_b)")
    return AngularPrototypicalHead(num_classes=num_classes, embedding_dim=embedding_dim, ctx=ctx, **ap)


@HEADS.register("margin_angproto")
def margin_angproto_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any,
                         seed: int) -> nn.Module:
    """head.margin (+ margin_params, sample_rate, label_smoothing) as in head 'margin'; head.params:
    ap_weight (1.0), init_w, init_b for the prototypical part; other keys go to the margin head."""
    from types import SimpleNamespace

    from xclass.heads.margin_head import check_head_params, margin_head

    ap, rest = _split_params(head_cfg)
    check_head_params(rest, "margin_angproto", AP_KEYS)       # names this head and its own keys too
    ap_weight = float(ap.pop("ap_weight", 1.0))
    defaults = {"margin": "aam", "margin_params": {}, "sample_rate": 1.0, "label_smoothing": 0.0}
    fields = {k: getattr(head_cfg, k, v) for k, v in defaults.items()}
    inner = margin_head(SimpleNamespace(**fields, params=rest), num_classes=num_classes,
                        embedding_dim=embedding_dim, ctx=ctx, seed=seed)
    return MarginAngprotoHead(inner, AngularPrototypicalHead(num_classes=num_classes, embedding_dim=embedding_dim,
                                                             ctx=ctx, **ap), ap_weight)
