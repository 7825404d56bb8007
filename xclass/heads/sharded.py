"""ShardedMarginHead: class vectors split over the ranks of a process group, any registered margin.

Per step, on every rank of ``ctx.group`` (world size W, uneven class split, ragged batches):
  1. all-gather the batch embeddings [B_local, d] -> [B_g, d] (and labels, no grad);
  2. (Partial FC) keep positives + negatives sampled by global class id at ``sample_rate``;
  3. scores [B_g, C_active_local] against this rank's rows only, upcast to fp32;
  4. margin on the local shard (pure), then the sharded objective (2 collectives of O(B_g)).
No rank ever holds all C class vectors or a [B_g, C] tensor.

Gradient-scale convention (see xclass.heads.base): ``loss`` is the mean over the global batch's
non-ignored rows, replicated. The all-gather backward sums every rank's contribution, which
is the exact d loss / d emb_local; the head multiplies it by W so that the data-parallel
*average* of encoder gradients equals the single-process gradient. Weight gradients are exact
d loss / d W_local and the head stays out of DDP/DeepSpeed averaging.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from xclass.parallel import collectives as C
from xclass.heads import fused, fused_update
from xclass.parallel.device import check_on_device
from xclass.heads.base import IGNORE_INDEX, HeadOutput, host_step
from xclass.heads.partition import class_range, to_local
from xclass.heads.sampling import sample_classes
from xclass.heads.sparse import SampledRows
from xclass.losses.seeding import mix_key
from xclass.losses.margins import MarginAux
from xclass.losses.objectives import GradSumAcross, binary_ce, softmax_ce, topk_threshold

INIT_BLOCK = 4096  # classes per init generator: init depends on (seed, global class id) only
ROW_CHUNK = 8192  # rows per chunk in the row-normalisation backward


class _NormalizeRows(torch.autograd.Function):
    """x / |x| per row with a row-wise backward ``(g - y <y, g>) / |x|``: 5 passes over [R, d]
    instead of autograd's chain through vector_norm / clamp / div (the class rows are large)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        inv = x.norm(dim=1, keepdim=True).clamp_min_(1e-12).reciprocal_()
        y = x * inv  # a multiply by the reciprocal: cheaper than a divide over [R, d]
        ctx.save_for_backward(y, inv)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        y, inv = ctx.saved_tensors
        # g is the fresh weight gradient of the score GEMM (single consumer): update it in
        # place, in row chunks so the temporary product stays small and is reused
        for a in range(0, g.shape[0], ROW_CHUNK):
            gc, yc = g[a:a + ROW_CHUNK], y[a:a + ROW_CHUNK]
            dot = (yc * gc).sum(1, keepdim=True)
            gc.addcmul_(yc, dot, value=-1.0).mul_(inv[a:a + ROW_CHUNK])
        return g


def init_class_rows(start: int, stop: int, k: int, d: int, seed: int, std: float) -> torch.Tensor:
    """[(stop - start) * k, d] fp32 rows for global classes [start, stop), class-major; row values
    depend only on (seed, class id), so every world size builds the same head."""
    # drawn on the host from a host generator (the same values on every device and world size);
    # the module moves them to the run's device
    out = torch.empty((stop - start) * k, d, device="cpu")
    for b in range(start // INIT_BLOCK, (stop - 1) // INIT_BLOCK + 1):
        lo, hi = b * INIT_BLOCK, (b + 1) * INIT_BLOCK
        g = torch.Generator().manual_seed(mix_key(seed, b, 0x1417))
        block = torch.randn((hi - lo) * k, d, generator=g, device="cpu").mul_(std)
        a, z = max(lo, start), min(hi, stop)
        out[(a - start) * k:(z - start) * k] = block[(a - lo) * k:(z - lo) * k]
    return out


class ShardedMarginHead(nn.Module):
    """Margin head over classes ``[start, stop)`` of ``num_classes``.

    weight: [C_local * K, d] fp32, sharded over classes (K = margin.sub_centers, class-major).
    bias: [1] replicated (binary objectives only). step_count: optimizer steps taken (buffer).
    """

    def __init__(self, margin: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int = 0,
                 sample_rate: float = 1.0, label_smoothing: float = 0.0, init_std: float = 0.01,
                 bias_init: Optional[float] = None, impl: str = "auto", chunk: int = 0,
                 update_in_backward: bool = False) -> None:
        super().__init__()
        self.impl, self.chunk = fused.check_impl(impl, chunk)
        # the fused backward applies the optimizer step chunk by chunk (xclass.heads.fused_update)
        self.update_in_backward = fused_update.check_flag(update_in_backward, float(sample_rate), self.impl)
        self.inline_optimizer: Any = None
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if label_smoothing and margin.objective != "softmax":
            raise ValueError(f"label_smoothing applies to softmax margins, not {type(margin).__name__}")
        self.margin, self.ctx, self.seed = margin, ctx, int(seed)
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self.sample_rate, self.label_smoothing = float(sample_rate), float(label_smoothing)
        self.k = int(margin.sub_centers)
        self.start, self.stop = class_range(num_classes, ctx.rank, ctx.world_size)
        rows = init_class_rows(self.start, self.stop, self.k, embedding_dim, self.seed, init_std)
        # Partial FC keeps W out of autograd: the optimizer updates only the sampled rows
        self.weight = nn.Parameter(rows, requires_grad=self.sample_rate >= 1.0)
        self.bias: Optional[nn.Parameter] = None
        if margin.objective == "binary":
            b0 = margin.init_bias(num_classes) if bias_init is None else bias_init
            self.bias = nn.Parameter(torch.tensor([float(b0)], device=rows.device))
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64, device=rows.device))
        self.sampled = SampledRows()  # Partial FC: the sampled rows of each forward of this step

    @property
    def active(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(row ids, leaf rows) with the step's gradient under Partial FC (micro-batches merged);
        None when the whole shard is a parameter."""
        return self.sampled.merged()

    @property
    def group(self) -> Any:
        return self.ctx.group if self.ctx.world_size > 1 else None

    # ------------------------------------------------------------------ forward pieces
    def _check_labels(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        if emb.dim() != 2 or emb.shape[1] != self.embedding_dim:
            raise ValueError(f"head: embeddings must be [B, {self.embedding_dim}], got {tuple(emb.shape)}")
        if labels.dim() != 1 or labels.shape[0] != emb.shape[0] or labels.is_floating_point():
            raise ValueError(f"head: labels must be an integer [B={emb.shape[0]}] tensor, got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_classes))
        msg = f"outside [0, {self.num_classes}) (use {IGNORE_INDEX} to ignore a row)"
        check_on_device(~bad.any(), lambda: f"head: label {int(labels[bad][0])} {msg}", f"head: a label {msg}")

    def _active_rows(self, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """(class rows [R, d] used this step, target remapped to them, global active class count)."""
        if self.sample_rate >= 1.0 or not self.training:
            return self.weight, target, self.num_classes
        # negatives depend on (seed, step): the micro-batches of one step share them and add
        # their own positives; their gradients accumulate on the union (SampledRows.merged)
        idx = sample_classes(self.start, self.stop, target, self.sample_rate, self.seed,
                             host_step(self))
        rows = (idx.unsqueeze(1) * self.k + torch.arange(self.k, device=idx.device)).reshape(-1)
        leaf = self.sampled.take(self.weight, rows)
        t = torch.where(target >= 0, torch.searchsorted(idx, target.clamp(min=0)), target)
        n_active = self._global_count(idx) if self.label_smoothing else 0
        return leaf, t, n_active

    def _global_count(self, idx: torch.Tensor) -> int:
        """Sampled classes over all ranks (label smoothing spreads over them): a host read, like
        the sample size itself, which is data dependent."""
        return int(C.all_reduce(torch.tensor([idx.numel()], device=idx.device), "sum", self.group))

    def _scores(self, emb_g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[B_g, R] scores in the embedding dtype (bf16/fp16 GEMM allowed), cast to fp32 after."""
        if self.margin.normalized:
            emb_g = F.normalize(emb_g.float(), dim=1).to(emb_g.dtype)
            w = _NormalizeRows.apply(w)
        return (emb_g @ w.to(emb_g.dtype).t()).float()

    def _target_cos(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[B_g] target cosine (max over sub-centres), replicated. Gathers only the K target
        columns of each row: an amax over the whole [B_g, R] matrix would copy it."""
        cols = target.clamp(min=0).unsqueeze(1) * self.k + torch.arange(self.k, device=cos.device)
        if cos.shape[1] == 0:  # an empty Partial-FC sample holds no target
            local = cos.new_zeros(cos.shape[0])
        else:
            local = cos.detach().gather(1, cols).amax(1)
        return C.all_reduce(torch.where(target >= 0, local, torch.zeros_like(local)), "sum", self.group)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        """emb [B_local, d] sharded over the batch (ragged sizes allowed); labels [B_local] global
        ids or IGNORE_INDEX. Returns the global-batch mean loss (replicated)."""
        self._check_labels(emb, labels)
        emb_g = C.gather_global_batch(emb, self.group)
        labels_g = C.all_gather_nograd(labels.to(torch.int64), self.group)
        valid = labels_g != IGNORE_INDEX
        target = to_local(labels_g, self.start, self.stop)
        w, target, n_active = self._active_rows(target)
        if fused.use_fused(self.impl, self.margin, emb_g, w):  # same loss, no [B_g, C_local] buffer
            per = fused.head_loss(self, emb_g, w, target, valid, n_active)
            n = valid.sum().clamp(min=1)
            loss = per.sum() / n
            return HeadOutput(loss=loss, metrics={"loss": loss.detach(), "valid_rows": n.detach()})
        cos = self._scores(emb_g, w)
        tcos = self._target_cos(cos, target) if self.margin.needs_target_cos else None
        thr = None
        if getattr(self.margin, "needs_topk", 0):
            c = cos.detach().view(cos.shape[0], cos.shape[1] // self.k, self.k).amax(-1)
            thr = topk_threshold(c, target, self.margin.needs_topk, self.group)
        aux = MarginAux(step=host_step(self), seed=self.seed, valid=valid, target_cos=tcos, owned=True,
                        topk_threshold=thr)
        logits = self.margin(cos, target, aux)
        if self.margin.objective == "binary":
            b = GradSumAcross.apply(self.bias, self.group)
            per = binary_ce(logits + b, target, valid, lam=self.margin.lam,
                            weight=self.margin.loss_weight, group=self.group)
        else:
            per = softmax_ce(logits, target, valid, group=self.group, label_smoothing=self.label_smoothing,
                             num_classes=n_active or self.num_classes, inplace=True)
        n = valid.sum().clamp(min=1)
        loss = per.sum() / n
        return HeadOutput(loss=loss, metrics={"loss": loss.detach(), "valid_rows": n.detach()})

    # ------------------------------------------------------------------ contract
    def replicated_parameters(self) -> List[nn.Parameter]:
        """Parameters every rank holds whole (the binary objectives' bias); clipping counts them once."""
        return [] if self.bias is None else [self.bias]

    def local_weight(self) -> Tuple[torch.Tensor, int]:
        """([C_local * K, d] class rows, class-major, first global class id of this rank)."""
        return self.weight.detach(), self.start

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, C_local] fp32 scores of replicated embeddings against this rank's classes
        (cosines, max over sub-centres, when the margin is normalised; dot products otherwise)."""
        cos = self._scores(emb, self.weight)
        return cos.view(cos.shape[0], cos.shape[1] // self.k, self.k).amax(-1)

    def make_optimizer(self, optim_cfg: Any):
        from xclass.heads.optim import build_head_optimizer

        opt = build_head_optimizer(self, optim_cfg)
        if self.update_in_backward:
            fused_update.check_optimizer(opt)
            self.inline_optimizer = opt
        return opt

    def check_run(self, cfg: Any) -> None:
        """ConfigError for run settings this head cannot train under (update_in_backward)."""
        if self.update_in_backward:
            fused_update.check_run(cfg)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, classes=[{self.start}, {self.stop}) of {self.num_classes}, "
                f"d={self.embedding_dim}, sample_rate={self.sample_rate}")
