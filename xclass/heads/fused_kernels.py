"""Triton kernels of the fused margin head (imported lazily by xclass.heads.fused_triton, so that
importing xclass does not import Triton). Descriptions and status: xclass/heads/fused_triton.py
and docs/fused_head.md. Every index is int64 (C * d and B * C above 2^31)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fwd_stats_kernel(E, W, T, ZT, M_out, S_out, Z_out, B, C, D, tiles_per_split, stride_e, stride_w,
                      scale, NORMALIZED: tl.constexpr, SMOOTH: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_s = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    tgt = tl.load(T + rows, mask=rmask, other=-1)
    zt = tl.load(ZT + rows, mask=rmask, other=0.0)
    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    se = tl.zeros([BLOCK_B], tl.float32)
    zs = tl.zeros([BLOCK_B], tl.float32)
    for t in range(0, tiles_per_split):
        cols = (pid_s * tiles_per_split + t) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        acc = tl.zeros([BLOCK_B, BLOCK_C], tl.float32)
        nrm = tl.zeros([BLOCK_C], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            e = tl.load(E + rows[:, None] * stride_e + ds[None, :], mask=rmask[:, None] & dmask[None, :],
                        other=0.0)
            w = tl.load(W + cols[:, None] * stride_w + ds[None, :], mask=cmask[:, None] & dmask[None, :],
                        other=0.0)
            if NORMALIZED:
                wf = w.to(tl.float32)
                nrm += tl.sum(wf * wf, axis=1)
            if IEEE:
                acc += tl.dot(e, tl.trans(w.to(e.dtype)), input_precision="ieee")
            else:
                acc += tl.dot(e, tl.trans(w.to(e.dtype)))
        if NORMALIZED:
            z = acc * (scale / tl.maximum(tl.sqrt(nrm), 1e-12))[None, :]
        else:
            z = acc * scale
        z = tl.where(cols[None, :] == tgt[:, None], zt[:, None], z)
        z = tl.where(cmask[None, :], z, float("-inf"))
        if SMOOTH:
            zs += tl.sum(tl.where(cmask[None, :], z, 0.0), axis=1)
        mn = tl.maximum(m, tl.max(z, axis=1))
        safe = tl.where(mn == float("-inf"), 0.0, mn)  # a tile past the last class
        se = se * tl.exp(m - safe) + tl.sum(tl.exp(z - safe[:, None]), axis=1)
        m = mn
    out = pid_s * B + rows
    tl.store(M_out + out, m, mask=rmask)
    tl.store(S_out + out, se, mask=rmask)
    tl.store(Z_out + out, zs, mask=rmask)


@triton.jit
def _load_rows(W, cols, cmask, ds, dmask, stride_w, NORMALIZED: tl.constexpr):
    """(class rows [BC, D_PAD] fp32 (0 past C and d), their 1/|w| [BC] (1 for raw margins))."""
    w = tl.load(W + cols[:, None] * stride_w + ds[None, :], mask=cmask[:, None] & dmask[None, :],
                other=0.0).to(tl.float32)
    if NORMALIZED:
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(w * w, axis=1)), 1e-12)
    else:
        inv = tl.sum(w * 0.0, axis=1) + 1.0
    return w, inv

@triton.jit
def _load_batch_rows(E, LSE, GS, T, rows, rmask, ds, dmask, stride_e):
    """(embeddings [BB, D_PAD] (0 past B and d), their lse, gradient scale and target column [BB])."""
    e = tl.load(E + rows[:, None] * stride_e + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    lse = tl.load(LSE + rows, mask=rmask, other=0.0)
    gs = tl.load(GS + rows, mask=rmask, other=0.0)
    tgt = tl.load(T + rows, mask=rmask, other=-1)
    return e, lse, gs, tgt

@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation; IEEE fp32 products (no TF32) for fp32 inputs."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)

@triton.jit
def _grad_tile(e, w_lo, inv, scale, lse, gs, tgt, cols, cmask, sub, IEEE: tl.constexpr):
    """G [BB, BC] fp32 = g_i s (exp(z - lse_i) - eps/N) for the recomputed logits
    z = s e . w / |w| (as the forward kernel), 0 on the target column and past C."""
    z = _dot(e, tl.trans(w_lo), IEEE) * (scale * inv)[None, :]
    p = tl.exp(z - lse[:, None]) - sub
    p = tl.where(cmask[None, :] & (cols[None, :] != tgt[:, None]), p, 0.0)
    return p * gs[:, None]

@triton.jit
def _bwd_dw_kernel(E, W, T, LSE, GS, DW, B, C, D, stride_e, stride_w, stride_dw, scale, sub,
                   NORMALIZED: tl.constexpr, IEEE: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_C: tl.constexpr, D_PAD: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    ds = tl.arange(0, D_PAD)
    dmask = ds < D
    w, inv = _load_rows(W, cols, cmask, ds, dmask, stride_w, NORMALIZED)
    w_lo = w.to(E.dtype.element_ty)
    acc = tl.zeros([BLOCK_C, D_PAD], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        rmask = rows < B
        e, lse, gs, tgt = _load_batch_rows(E, LSE, GS, T, rows, rmask, ds, dmask, stride_e)
        g = _grad_tile(e, w_lo, inv, scale, lse, gs, tgt, cols, cmask, sub, IEEE)
        acc += _dot(tl.trans(g.to(e.dtype)), e, IEEE)  # dL/du_j = sum_i G_ij e_i
    if NORMALIZED:  # through the row normalisation: (g - u <u, g>) / |w|, u = w / |w|
        u = w * inv[:, None]
        acc = (acc - u * tl.sum(u * acc, axis=1)[:, None]) * inv[:, None]
    tl.store(DW + cols[:, None] * stride_dw + ds[None, :], acc, mask=cmask[:, None] & dmask[None, :])

@triton.jit
def _bwd_de_kernel(E, W, T, LSE, GS, DE, B, C, D, stride_e, stride_w, stride_de, scale, sub,
                   NORMALIZED: tl.constexpr, IEEE: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_C: tl.constexpr, D_PAD: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    ds = tl.arange(0, D_PAD)
    dmask = ds < D
    e, lse, gs, tgt = _load_batch_rows(E, LSE, GS, T, rows, rmask, ds, dmask, stride_e)
    acc = tl.zeros([BLOCK_B, D_PAD], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        cmask = cols < C
        w, inv = _load_rows(W, cols, cmask, ds, dmask, stride_w, NORMALIZED)
        w_lo = w.to(E.dtype.element_ty)
        g = _grad_tile(e, w_lo, inv, scale, lse, gs, tgt, cols, cmask, sub, IEEE)
        acc += _dot(g.to(e.dtype), (w * inv[:, None]).to(e.dtype), IEEE)  # sum_j G_ij u_j
    tl.store(DE + rows[:, None] * stride_de + ds[None, :], acc, mask=rmask[:, None] & dmask[None, :])

def _tile_configs():
    """Autotune candidates: (BLOCK_B, BLOCK_C, warps, stages); :func:`_prune` drops those
    whose full-d tiles would not fit for the padded d."""
    return [triton.Config({"BLOCK_B": bb, "BLOCK_C": bc}, num_warps=nw, num_stages=ns)
            for bb, bc in ((32, 32), (32, 64), (64, 32), (64, 64), (64, 128), (128, 64), (16, 64))
            for nw, ns in ((4, 2), (8, 2), (8, 3))]

def _prune(block: str, other: str):
    """Keep configs whose accumulator (``block`` x D_PAD fp32) stays within 64 KiB, the tile
    streamed along the loop (``other`` x D_PAD) within 128 KiB, and the score tile 128 x 64."""
    def prune(configs, named_args, **kwargs):
        d_pad = kwargs.get("D_PAD", named_args.get("D_PAD"))
        keep = [c for c in configs if c.kwargs[block] * d_pad <= 128 * 128
                and c.kwargs[other] * d_pad <= 128 * 256 and c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_C"] <= 128 * 64]
        return keep or configs[:1]
    return prune

_KEY = ["D_PAD", "IEEE", "NORMALIZED"]
_bwd_dw_tuned = triton.autotune(_tile_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("BLOCK_C", "BLOCK_B")})(_bwd_dw_kernel)
_bwd_de_tuned = triton.autotune(_tile_configs(), key=_KEY, prune_configs_by={
    "early_config_prune": _prune("BLOCK_B", "BLOCK_C")})(_bwd_de_kernel)
