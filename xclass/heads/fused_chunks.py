"""The chunked torch loops of the fused margin head (xclass.heads.fused): forward statistics and
backward over the local classes, ``ch`` classes at a time (CPU, and CUDA where the Triton kernels
do not run).

Every chunk of one loop reuses the buffers of one :class:`Work`: the scores [B_g, ch K], the unit
rows [ch K, d] and their 1/|w|, the normalisation backward's temporaries and (when the step is
applied in the backward) the chunk's weight gradient. The GEMMs write straight into them
(``out=``), elementwise work is in place, so a chunk allocates nothing of its size and a step
touches each buffer's pages once instead of once per chunk. The fp32 one-row-per-class case
(the common one) takes this path whole; sub-centres and bf16/fp16 GEMM inputs allocate their
[B_g, ch K] score temporaries per chunk (their extra arg-max / cast passes need them anyway).

Shapes: emb_q [B, d] replicated (normalised for cosine margins); w [C_a K, d] class rows of this
rank (sharded, fp32); target [B] local class column or -1; all statistics [B] fp32.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

CHUNK_ELEMS = {"cpu": 1 << 19, "cuda": 1 << 26}  # auto chunk: fp32 [B_g, ch K] temporaries of 2 / 256 MiB


def chunk_classes(b: int, k: int, chunk: int, device: str = "cpu") -> int:
    """Classes per chunk: ``chunk`` when > 0, else about CHUNK_ELEMS[device] / (B_g K) (half that
    with sub-centres, whose arg-max routing holds two more [B_g, ch K] buffers), at least 64.
    CPU chunks stay cache-sized; GPU chunks are large so that few kernels are launched."""
    if chunk > 0:
        return int(chunk)
    return max(64, CHUNK_ELEMS.get(device, CHUNK_ELEMS["cpu"]) // max(1, b * k * (2 if k > 1 else 1)))


class Work:
    """Chunk buffers of one loop (flat fp32 storage, viewed at each chunk's width): scores
    ``z`` [B, n K], unit rows ``u`` [n K, d], ``inv`` / ``dot`` [n K], ``tmp`` [n K, d] (the
    normalisation backward's product) and, with ``grad``, the chunk gradient ``g`` [n K, d]."""

    def __init__(self, b: int, rows: int, d: int, device: torch.device, unit: bool = True, grad: bool = False,
                 lse: Optional[torch.Tensor] = None) -> None:
        new = lambda n: torch.empty(n, device=device)  # noqa: E731
        self.z, self.inv, self.dot = new(b * rows), new(rows), new(rows)
        self.u, self.tmp = (new(rows * d), new(rows * d)) if unit else (None, None)  # cosine margins only
        self.g = new(rows * d) if grad else None
        self.zero = torch.zeros(1, 1, device=device)
        self.neg_lse = None if lse is None else lse.neg().unsqueeze(1)  # [B, 1]: the backward GEMM's input

    @staticmethod
    def view(buf: torch.Tensor, *shape: int) -> torch.Tensor:
        return buf[:math.prod(shape)].view(shape)


def _unit(wc: torch.Tensor, spec: Any, dt: torch.dtype, wk: Work):
    """(unit rows [n, d] in the GEMM dtype, 1/|w| [n] fp32 or None for raw logits). With raw
    logits and fp32 the rows are ``wc`` itself (a view of w, not a copy)."""
    n, d = wc.shape
    if not spec.normalized:
        return (wc if dt == torch.float32 else wc.to(dt)), None
    inv = wk.view(wk.inv, n)
    torch.linalg.vector_norm(wc, dim=1, out=inv)
    inv.clamp_min_(1e-12).reciprocal_()
    if dt != torch.float32:
        return (wc * inv.unsqueeze(1)).to(dt), inv
    return torch.mul(wc, inv.unsqueeze(1), out=wk.view(wk.u, n, d)), inv


def _logits(emb_q: torch.Tensor, u: torch.Tensor, spec: Any, wk: Work, bias: Optional[torch.Tensor] = None):
    """(class logits ``s * c - lse`` [B, n] fp32 (``bias``: -lse [B, 1], or none), raw scores
    [B, n K] or None when K = 1). The scale and the bias ride on the GEMM (addmm's alpha / input);
    fp32 with K = 1 writes into the work buffer."""
    b = emb_q.shape[0]
    if spec.k == 1 and emb_q.dtype == torch.float32:
        out = wk.view(wk.z, b, u.shape[0])
        if bias is None:
            return torch.addmm(wk.zero, emb_q, u.t(), beta=0.0, alpha=spec.s, out=out), None
        return torch.addmm(bias, emb_q, u.t(), alpha=spec.s, out=out), None
    raw = (emb_q @ u.t()).float()
    z = raw.view(b, -1, spec.k).amax(2) if spec.k > 1 else raw
    z = z.mul_(spec.s) if spec.k > 1 or bias is None else z.mul(spec.s)
    return (z if bias is None else z.add_(bias)), (raw if spec.k > 1 else None)


def _target_col(target: torch.Tensor, a: int, z: int):
    """(rows whose target class is in [a, z) [B] bool, their local column [B, 1] (clamped))."""
    return (target >= a) & (target < z), (target - a).clamp(0, z - a - 1).unsqueeze(1)


def forward_stats_torch(emb_q, w, target, zt, spec: Any):
    """Local log-sum-exp statistics over the shard's logits (target column = zt): a row shift
    [B], sum of exp(z - shift) [B] and sum of logits [B] (label smoothing only), fp32; shift -inf
    for no classes.

    Cosine margins on the CPU know a bound before any score: every non-target logit is
    ``s * cos`` in [-s, s] and the target logit is ``zt``. While ``n e^max(s, zt)`` fits in fp32
    (s up to about 72 for 10^7 classes in all) the shift is 0: ``exp(z)`` itself is summed, in one pass
    per chunk, with the precision of the online form (each exponent is the exact logit, no
    running max, no rescaling, no subtraction). Beyond that the smallest shift that keeps the sum
    finite is taken. A row whose sum came out so small that its terms could have left fp32's
    normal range is recomputed with the online max: rare, and a host read (free on the CPU).
    Elsewhere (raw logits, CUDA) the online log-sum-exp runs: running max, rescaled sum."""
    if w.shape[0] == 0 or not spec.normalized or emb_q.device.type != "cpu":
        return _online_stats(emb_q, w, target, zt, spec)
    n = w.shape[0] // spec.k
    # the bound covers the sum over ALL ranks' classes (the ranks' sums are added unshifted)
    shift = (zt.clamp(min=spec.s) + (math.log(max(n, spec.n_cls)) - SUM_EXP_MAX)).clamp_(min=0.0)
    se, zs = _bounded_stats(emb_q, w, target, zt, shift, spec)
    # each term is a normal fp32 number (relative error 2^-24) unless below 2^-126; a sum above
    # n * 2^-102 keeps the denormal terms' total error under 2^-24 of it
    bad = se < n * 2.0 ** -102
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)
        m2, se2, _ = _online_stats(emb_q[rows], w, target[rows], zt[rows], spec)
        shift, se = shift.index_copy(0, rows, m2), se.index_copy(0, rows, se2)
    return shift, se, zs


SUM_EXP_MAX = 88.0  # log of the largest sum of exponentials a row may reach (fp32 max: e^88.72)


def _bounded_stats(emb_q, w, target, zt, shift, spec: Any):
    """(sum exp(z - shift) [B], sum z [B]) for a row shift [B] known before the loop (0 for
    every row in the common case: then no bias at all): one exp pass per chunk."""
    b, d = emb_q.shape
    se = torch.zeros(b, device=emb_q.device)
    zs = torch.zeros(b, device=emb_q.device)
    shifted = bool((shift > 0).any())
    neg = shift.neg().unsqueeze(1) if shifted else None
    n_cls = w.shape[0] // spec.k
    ch = min(chunk_classes(b, spec.k, spec.chunk, emb_q.device.type), max(1, n_cls))
    wk = Work(b, ch * spec.k, d, emb_q.device, unit=spec.normalized)
    late = shifted and spec.smoothing > 0  # the logit sum wants unshifted logits: shift after it
    for a in range(0, n_cls, ch):
        z_ = min(a + ch, n_cls)
        u, _ = _unit(w[a * spec.k:z_ * spec.k], spec, emb_q.dtype, wk)
        logits, _ = _logits(emb_q, u, spec, wk, bias=None if late else neg)
        sel, col = _target_col(target, a, z_)
        tz = zt - shift if shifted and not late else zt
        logits.scatter_(1, col, torch.where(sel, tz, logits.gather(1, col).squeeze(1)).unsqueeze(1))
        if spec.smoothing > 0:
            zs += logits.sum(1)
        if late:
            logits.add_(neg)
        se += logits.exp_().sum(1)
    return se, zs


def _online_stats(emb_q, w, target, zt, spec: Any):
    """Online log-sum-exp: (running row max [B], sum exp(z - max) [B], sum z [B])."""
    b, d = emb_q.shape
    m = torch.full((b,), float("-inf"), device=emb_q.device)
    se = torch.zeros(b, device=emb_q.device)
    zs = torch.zeros(b, device=emb_q.device)
    n_cls = w.shape[0] // spec.k
    ch = min(chunk_classes(b, spec.k, spec.chunk, emb_q.device.type), max(1, n_cls))
    wk = Work(b, ch * spec.k, d, emb_q.device, unit=spec.normalized)
    for a in range(0, n_cls, ch):
        z_ = min(a + ch, n_cls)
        u, _ = _unit(w[a * spec.k:z_ * spec.k], spec, emb_q.dtype, wk)
        logits, _ = _logits(emb_q, u, spec, wk)
        sel, col = _target_col(target, a, z_)
        logits.scatter_(1, col, torch.where(sel, zt, logits.gather(1, col).squeeze(1)).unsqueeze(1))
        if spec.smoothing > 0:
            zs += logits.sum(1)
        mn = torch.maximum(m, logits.amax(1))
        se = se * torch.exp(m - mn) + logits.sub_(mn.unsqueeze(1)).exp_().sum(1)
        m = mn
    return m, se, zs


Sink = Callable[[int, int, torch.Tensor], None]  # (first row, end row, d loss / d rows [n, d])


def backward_stats_torch(emb_q, w, target, lse, g_row, spec: Any, need_dw: bool, sink: Optional[Sink] = None):
    """(dL/demb_q [B, d] fp32, dL/dw [R, d] or None) of the non-target logits. With ``sink`` the
    weight gradient is never whole: each chunk's rows go to ``sink(lo, hi, grad)`` (the step
    applied in the backward) and None is returned for dw."""
    b, d = emb_q.shape
    # d loss / d logit_ij = g_i (p_ij - eps/N); the row factor g_i s goes into the embeddings
    eg = (emb_q.float() * (g_row * spec.s).unsqueeze(1)).to(emb_q.dtype)
    acc = torch.zeros(emb_q.shape, device=emb_q.device)  # sum_j (p_ij - eps/N) w_j / |w_j|
    dw = torch.empty_like(w) if need_dw and sink is None else None  # every row is written
    n_cls = w.shape[0] // spec.k
    ch = min(chunk_classes(b, spec.k, spec.chunk, emb_q.device.type), max(1, n_cls))
    wk = Work(b, ch * spec.k, d, emb_q.device, unit=spec.normalized, grad=sink is not None, lse=lse)
    for a in range(0, n_cls, ch):
        backward_chunk(emb_q, eg, w, a, min(a + ch, n_cls), target, lse, spec, acc, dw, wk, sink)
    return acc.mul_((g_row * spec.s).unsqueeze(1)), dw


def backward_chunk(emb_q, eg, w, a: int, z: int, target, lse, spec: Any, acc: torch.Tensor,
                   dw: Optional[torch.Tensor], wk: Optional[Work] = None, sink: Optional[Sink] = None) -> None:
    """Adds classes [a, z)'s ``(p - eps/N) @ w_unit`` to acc [B, d] and writes
    dw[a K : z K] = d loss / d rows (eg = emb_q scaled by g_i s per row), or hands the rows'
    gradient to ``sink``. acc is updated first: raw-logit unit rows are a view of w, which the
    sink may update."""
    dt, k, (b, d) = emb_q.dtype, spec.k, emb_q.shape
    wk = wk or Work(b, (z - a) * k, d, emb_q.device, unit=spec.normalized, grad=sink is not None, lse=lse)
    u, inv = _unit(w[a * k:z * k], spec, dt, wk)
    p, raw = _logits(emb_q, u, spec, wk, bias=wk.neg_lse)
    p.exp_()
    if spec.smoothing > 0:
        p.sub_(spec.smoothing / spec.n_cls)
    sel, col = _target_col(target, a, z)  # the target logit is zt: its gradient goes through the margin
    p.scatter_(1, col, torch.where(sel, torch.zeros_like(lse), p.gather(1, col).squeeze(1)).unsqueeze(1))
    if k > 1:  # route to the arg-max sub-centre (ties split evenly, as amax's backward)
        c = raw.view(b, -1, k)
        hit = (c == c.amax(2, keepdim=True)).float()
        p = hit.div_(hit.sum(2, keepdim=True)).mul_(p.unsqueeze(2)).view(b, -1)
    pd = p.to(dt)
    if dt == torch.float32:
        acc.addmm_(pd, u)
    else:
        acc += (pd @ u).float()
    if dw is None and sink is None:
        return
    gy = dw[a * k:z * k] if dw is not None else wk.view(wk.g, (z - a) * k, d)
    if dt == torch.float32:  # d loss / d unit rows, then through the normalisation, in place
        torch.mm(pd.t(), eg, out=gy)
    else:
        gy.copy_(pd.t() @ eg)
    if inv is not None:  # (g - u <u, g>) / |w| with u = w / |w|
        u32 = u.float()
        dot = torch.sum(torch.mul(u32, gy, out=wk.view(wk.tmp, *gy.shape)), 1, out=wk.view(wk.dot, gy.shape[0]))
        gy.addcmul_(u32, dot.unsqueeze(1), value=-1.0).mul_(inv.unsqueeze(1))
    if sink is not None:
        sink(a * k, z * k, gy)
