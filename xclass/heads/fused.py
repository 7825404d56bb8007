"""Fused exact margin-softmax cross-entropy over a class shard: no [B_g, C_local] tensor.

The materialised head (xclass.heads.sharded) forms one fp32 score buffer [B_g, C_local]. This
module computes the same loss and gradients chunk by chunk over the local classes:

forward   for each chunk of ``ch`` classes: scores [B_g, ch * K] = emb_q @ W_chunk^T, scaled by
          the chunk rows' 1/|w| (row normalisation fused: no normalised copy of W), max over the
          K sub-centres, ``z = s * c``; the target column of rows whose class is in the chunk is
          replaced by the margin's target logit ``zt``; an online log-sum-exp keeps the running
          row max ``m`` and ``sum exp(z - m)`` (plus ``sum z`` for label smoothing). Then the
          same two O(B_g) collectives as the materialised objective: MAX of ``m``, SUM of
          [rescaled sum-exp, target logit, logit sum]. Saved for backward: O(B_g) stats.
backward  recomputes each chunk's scores, forms ``dL/dz = g (softmax - eps/N)`` with the target
          column zeroed (it belongs to ``zt``), routes it to the arg-max sub-centre, and adds
          ``dL/dW_chunk`` (through the fused normalisation) and ``dL/demb_q`` chunk by chunk.

The target logit ``zt [B_g]`` is computed by the margin itself on the gathered target rows
([B_g, K] cosines, a small autograd graph), so every target-only softmax margin in MARGINS works
unchanged (ElasticFace draws, straight-through modes, warm-up schedules, sub-centres); its
gradient is taken with ``torch.autograd.grad`` in the backward and scattered into ``dW``.
Margins that change non-target entries (the inter-top-k penalty) and binary objectives
(SphereFace2) stay on the materialised path (:func:`supports`).

The chunk loops live in xclass.heads.fused_chunks; ``head.params.update_in_backward`` (the SGD
step applied per chunk in the backward) in xclass.heads.fused_update.

Extra memory: a few [B_g, ch * K] fp32 chunk temporaries, [B_g, d] for emb_q and its gradient,
the [R, d] weight gradient (as the materialised head; one chunk of it with update_in_backward)
and O(B_g) stats; never O(B_g * C_local).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

from xclass.config_types import ConfigError
from xclass.heads import fused_triton, fused_update
from xclass.heads.fused_chunks import (CHUNK_ELEMS, backward_chunk, backward_stats_torch,  # noqa: F401
                                       chunk_classes, forward_stats_torch)
from xclass.heads.base import host_step
from xclass.losses.margins import MarginAux
from xclass.parallel.collectives import all_reduce

IMPLS = ("auto", "fused", "materialized")


# ``impl: auto``: on CPU the two heads are within a few per cent at D = 1e5 (the fused one runs a
# fourth GEMM; the materialised one runs its three out of cache), the materialised one slightly
# ahead on average (docs/benchmarks.md), so auto takes it until its fp32 [B_g, C_active] score
# buffer would exceed this fraction of the device's memory; beyond that the fused head (no
# buffer) is the one that runs.
AUTO_MEMORY_FRACTION = 1.0 / 16


@functools.lru_cache(maxsize=None)
def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device`` (host RAM for CPU); no synchronisation. Read once per device:
    ``impl: auto`` asks on every forward."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_impl(impl: Any, chunk: Any) -> Tuple[str, int]:
    """Validated (head.params.impl, head.params.chunk); a bad value is a ConfigError naming the key."""
    if impl not in IMPLS:
        raise ConfigError(f"head.params.impl must be one of {IMPLS}, got {impl!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ConfigError(f"head.params.chunk must be an integer >= 0 (0 = automatic), got {chunk!r}")
    return impl, chunk


def use_fused(impl: str, margin: Any, emb: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a head with ``impl`` runs the fused path for this margin, the gathered batch
    emb [B_g, d] and the active class rows w [R, d]; margins outside :func:`supports` always use
    the materialised path. ``auto``: fused when the materialised [B_g, R] fp32 buffer would
    exceed AUTO_MEMORY_FRACTION of the device memory."""
    if impl == "materialized" or not supports(margin):
        return False
    if impl == "fused":
        return True
    return 4 * emb.shape[0] * w.shape[0] > AUTO_MEMORY_FRACTION * device_memory_bytes(emb.device)


def head_loss(head: Any, emb_g: torch.Tensor, w: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
              n_active: int) -> torch.Tensor:
    """Per-row loss [B_g] for a ShardedMarginHead (its margin, sub-centres, smoothing, group)."""
    spec = FusedSpec(s=float(head.margin.s), k=head.k, normalized=bool(head.margin.normalized),
                     smoothing=head.label_smoothing, n_cls=n_active or head.num_classes, chunk=head.chunk,
                     group=head.group, update=fused_update.optimizer_of(head))
    aux = MarginAux(step=host_step(head), seed=head.seed, valid=valid)
    return fused_softmax_ce(head.margin, emb_g, w, target, valid, aux, spec)


def memory_bytes(b: int, c_local: int, d: int, k: int = 1, r: float = 1.0, chunk: int = 0,
                 activations_only: bool = False, update_in_backward: bool = False) -> int:
    """Predicted per-rank memory of a fused head step (fp32, SGD momentum), in bytes.

    W + momentum ``8 C_l K d``; the weight gradient ``4 C_l K d`` (r = 1: no normalised copy of
    W), or with ``update_in_backward`` only one chunk of it ``4 ch K d``, or under Partial FC the
    sampled rows and their gradient ``8 C_a K d`` plus the sampling keys and their int64 hash
    temporaries ``48 C_l``; activations: three fp32 chunk buffers ``12 B ch K`` (scores, softmax,
    one transient; five, ``20 B ch K``, with sub-centres), the chunk's unit rows and the
    normalisation backward's product ``8 ch K d``, the batch-sized vectors ``24 B d`` (emb_q, its
    scaled copy, the gradient accumulators) and the target rows ``12 B K d``. No term in B * C_l.
    ``activations_only``: the activation terms (what one step allocates beyond W, momentum and
    the weight gradient or its chunk)."""
    ch = min(chunk_classes(b, k, chunk), max(1, c_local))
    act = (12 if k == 1 else 20) * b * ch * k + 8 * ch * k * d + 24 * b * d + 12 * b * k * d
    if activations_only:
        return act
    c_a = math.ceil(c_local * r) if r < 1 else c_local
    rows = 8 * c_a * k * d + 48 * c_local if r < 1 else 4 * (ch if update_in_backward else c_local) * k * d
    return 8 * c_local * k * d + rows + act


def supports(margin: Any) -> bool:
    """True for softmax margins that change the target entries only (the fused path's scope)."""
    return margin.objective == "softmax" and not getattr(margin, "needs_topk", 0)


@dataclass(frozen=True)
class FusedSpec:
    """Static description of one fused call. s: logit scale; k: sub-centres (rows per class);
    normalized: cosines (rows and embeddings normalised) vs raw dot products; smoothing / n_cls:
    label smoothing over the GLOBAL active class count; chunk: classes per chunk."""

    s: float
    k: int
    normalized: bool
    smoothing: float
    n_cls: int
    chunk: int
    group: Any = None
    update: Any = None  # update_in_backward: the head optimizer whose step the backward applies


def _target_logits(margin: Any, emb_q: torch.Tensor, w: torch.Tensor, target: torch.Tensor,
                   aux: MarginAux, spec: FusedSpec):
    """(zt [B] fp32 target logits (0 where the class is not local), leaves (e, wt), graph output,
    target row ids [B * K]). The graph is the margin on [B, K] target cosines only; margins that
    need every row's target cosine get it with one O(B) SUM all-reduce (as the materialised head)."""
    has = target >= 0
    b, k = emb_q.shape[0], spec.k
    rows = (target.clamp(min=0).unsqueeze(1) * k + torch.arange(k, device=w.device)).reshape(-1)
    if w.shape[0] == 0:  # an empty (sampled) shard holds no target
        rows = torch.zeros(0, dtype=torch.int64, device=w.device)
        w = torch.zeros(b * k, emb_q.shape[1], device=w.device)
    with torch.enable_grad():
        e = emb_q.detach().float().requires_grad_(True)
        wt = w.detach()[:b * k] if rows.numel() == 0 else w.detach().index_select(0, rows)
        wt = wt.float().requires_grad_(True)
        wv = F.normalize(wt.view(b, k, -1), dim=2) if spec.normalized else wt.view(b, k, -1)
        cos_t = (wv * e.unsqueeze(1)).sum(2)
        if margin.needs_target_cos:
            local = torch.where(has, cos_t.detach().amax(1), torch.zeros(b, device=e.device))
            aux = replace(aux, target_cos=all_reduce(local, "sum", spec.group))
        out = margin(cos_t, torch.where(has, 0, -1), aux).float().squeeze(1)
    zt = torch.where(has, out.detach(), torch.zeros_like(out.detach()))
    return zt, (e, wt), out, rows


def _forward_stats(emb_q, w, target, zt, spec: FusedSpec):
    """The Triton kernel where it runs (xclass.heads.fused_triton), else the chunked torch loop."""
    if w.shape[0] and fused_triton.available(emb_q, spec.k):
        return fused_triton.forward_stats(emb_q, w, target, zt, spec.s, spec.normalized, spec.smoothing > 0)
    return forward_stats_torch(emb_q, w, target, zt, spec)


class _FusedCE(torch.autograd.Function):
    """Per-row loss [B] (replicated, 0 on ignored rows) from emb_q [B, d] (replicated; already
    normalised for cosine margins) and class rows w [R = C_a K, d] (sharded, raw)."""

    @staticmethod
    def forward(ctx, emb_q, w, margin, target, valid, aux, spec):  # type: ignore[override]
        zt, leaves, out, rows = _target_logits(margin, emb_q, w, target, aux, spec)
        m, se, zs = _forward_stats(emb_q, w, target, zt, spec)
        gmax = all_reduce(m, "max", spec.group)
        se = torch.where(torch.isfinite(m), se * torch.exp(m - gmax), torch.zeros_like(se))
        stats = all_reduce(torch.stack([se, zt, zs]), "sum", spec.group)
        lse = gmax + stats[0].log()
        eps = spec.smoothing
        loss = lse - (1.0 - eps) * stats[1] - (eps / spec.n_cls) * stats[2]
        ctx.save_for_backward(emb_q, w, target, valid, zt, lse, rows)
        ctx.leaves, ctx.out, ctx.spec = leaves, out, spec
        return torch.where(valid, loss, torch.zeros_like(loss))

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        emb_q, w, target, valid, zt, lse, rows = ctx.saved_tensors
        spec, need_dw = ctx.spec, ctx.needs_input_grad[1]
        g_row = torch.where(valid, g, torch.zeros_like(g))
        ge = gwt = None
        if ctx.out is not None and rows.numel():  # the target logits' gradient, through the margin
            eps = spec.smoothing
            g_zt = torch.where(target >= 0, (torch.exp(zt - lse) - (1.0 - eps) - eps / spec.n_cls) * g_row,
                               torch.zeros_like(g_row))
            ge, gwt = torch.autograd.grad(ctx.out, ctx.leaves, g_zt)
        ctx.leaves = ctx.out = None
        sink = None
        if spec.update is not None and need_dw:  # update_in_backward: every chunk's rows stepped here
            inf = fused_update.nonfinite_flag((emb_q, g_row, lse, gwt), spec.group, w.device)
            sink = fused_update.ChunkUpdate(spec.update, rows, gwt, inf)
        demb, dw = _backward_stats(emb_q, w, target, lse, g_row, spec, need_dw and sink is None, sink)
        if ge is not None:
            demb += ge
            if dw is not None:
                dw.index_add_(0, rows, gwt.to(dw.dtype))
        if sink is not None:
            spec.update.pending_sq = sink.sq
        return demb.to(emb_q.dtype), dw, None, None, None, None, None


def _backward_stats(emb_q, w, target, lse, g_row, spec: FusedSpec, need_dw: bool,
                    sink: Optional[fused_update.ChunkUpdate] = None):
    """(dL/demb_q [B, d] fp32, dL/dw [R, d] or None) of the non-target logits: the Triton
    kernels where they run (xclass.heads.fused_triton), else the chunked torch loop. With
    ``sink`` each chunk's weight gradient goes to it (never a whole dw)."""
    sub = spec.smoothing / spec.n_cls if spec.smoothing > 0 else 0.0
    if w.shape[0] and fused_triton.available(emb_q, spec.k):
        if sink is not None:
            return _triton_chunks(emb_q, w, target, lse, g_row * spec.s, spec, sub, sink), None
        return fused_triton.backward(emb_q, w, target, lse, g_row * spec.s, spec.s, spec.normalized, sub, need_dw)
    return backward_stats_torch(emb_q, w, target, lse, g_row, spec, need_dw, sink)


def _triton_chunks(emb_q, w, target, lse, gs, spec: FusedSpec, sub: float, sink) -> torch.Tensor:
    """dL/demb_q [B, d] fp32 from the Triton backward run per class chunk (CUDA chunk size), each
    chunk's dL/dw [ch, d] handed to ``sink`` before the next chunk is read."""
    b, n = emb_q.shape[0], w.shape[0]
    ch = chunk_classes(b, 1, spec.chunk, emb_q.device.type)
    demb = torch.zeros(emb_q.shape, device=emb_q.device)
    for a in range(0, n, ch):
        z = min(a + ch, n)
        t = torch.where((target >= a) & (target < z), target - a, torch.full_like(target, -1))
        de, dwc = fused_triton.backward(emb_q, w[a:z], t, lse, gs, spec.s, spec.normalized, sub, True)
        demb += de
        sink(a, z, dwc)
    return demb


def fused_softmax_ce(margin: Any, emb_g: torch.Tensor, w: torch.Tensor, target: torch.Tensor,
                     valid: torch.Tensor, aux: MarginAux, spec: FusedSpec) -> torch.Tensor:
    """Per-row margin softmax CE [B_g] (replicated, 0 on ignored rows), equal to
    ``softmax_ce(margin(scores(emb_g, w), target, aux), ...)`` without forming [B_g, C_local].

    emb_g [B_g, d] gathered batch (replicated); w [C_a K, d] class rows (sharded, fp32);
    target [B_g] local class column or -1; valid [B_g] bool (replicated). Under autocast the
    score GEMMs take the autocast dtype (bf16 / fp16, fp32 accumulation), as the materialised
    head's ``emb_g @ w.t()`` does; everything after the GEMMs stays fp32."""
    if not supports(margin):
        raise ValueError(f"the fused head covers target-only softmax margins, not {type(margin).__name__}")
    dt = emb_g.dtype
    if torch.is_autocast_enabled(emb_g.device.type):  # GEMM inputs as the materialised head's under autocast
        dt = torch.get_autocast_dtype(emb_g.device.type)
    emb_q = F.normalize(emb_g.float(), dim=1).to(dt) if spec.normalized else emb_g.to(dt)
    return _FusedCE.apply(emb_q, w, margin, target, valid, aux, spec)
