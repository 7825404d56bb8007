"""Triton kernel for the fused head's forward statistics (CUDA; Triton's interpreter on CPU in tests).

One program handles ``BLOCK_B`` rows of the gathered batch and one split of the local classes;
it walks its class tiles of ``BLOCK_C`` rows of W, computes the score tile with ``tl.dot``
over ``BLOCK_D`` slices of d (bf16/fp16 inputs use tensor cores with fp32 accumulation; fp32
inputs use IEEE fp32 products, no TF32), accumulates the tile rows' squared norms in the same
loop (the row normalisation of W is fused: no normalised copy), scales by ``s / |w|``, puts the
margin's target logit in the target column and updates an online (max, sum exp, sum) per row.
Nothing of size [B, C] is written: each program stores three fp32 values per row, and
:func:`forward_stats` merges the splits. Index arithmetic is int64, so ``C * d`` and ``B * C``
above 2^31 are fine. One class row per class only (sub-centres use the chunked torch path).

Status: checked against the torch path on CPU under ``TRITON_INTERPRET=1``
(tests/heads/test_fused_triton.py) and on a GPU by tests/heads/test_fused_gpu.py (marker ``gpu``).
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Tuple

import torch

HAVE_TRITON = importlib.util.find_spec("triton") is not None

if HAVE_TRITON:
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


def available(emb: torch.Tensor, k: int) -> bool:
    """The kernel runs for CUDA tensors (and for CPU tensors under Triton's interpreter,
    ``TRITON_INTERPRET=1``), one row per class, when Triton is installed."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return HAVE_TRITON and k == 1 and (emb.is_cuda or (interpret and emb.device.type == "cpu"))


def _blocks(b: int, d: int) -> Tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, BLOCK_D): 64 x 128 score tiles, d in slices of up to 64 (d = 128..512)."""
    return 64, 128, min(64, max(16, triton.next_power_of_2(d)))


def forward_stats(emb_q: torch.Tensor, w: torch.Tensor, target: torch.Tensor, zt: torch.Tensor,
                  s: float, normalized: bool, smoothing: bool, splits: int = 0):
    """(row max [B], sum exp(z - max) [B], sum z [B]) over the local classes, fp32, as
    ``xclass.heads.fused._forward_stats`` (K = 1). emb_q [B, d] (normalised when ``normalized``),
    w [C_l, d] raw rows, target [B] local column or -1, zt [B] target logits."""
    b, d = emb_q.shape
    c = w.shape[0]
    bb, bc, bd = _blocks(b, d)
    row_blocks = triton.cdiv(b, bb)
    tiles = triton.cdiv(c, bc)
    if splits <= 0:  # enough programs to fill the GPU: about 4 per SM-sized group of 132
        splits = max(1, min(tiles, math.ceil(528 / row_blocks)))
    per = triton.cdiv(tiles, splits)
    emb_q, w = emb_q.contiguous(), w.contiguous()
    outs = [torch.empty(splits, b, device=emb_q.device, dtype=torch.float32) for _ in range(3)]
    _fwd_stats_kernel[(row_blocks, splits)](
        emb_q, w, target.to(torch.int64).contiguous(), zt.float().contiguous(), *outs, b, c, d, per,
        emb_q.stride(0), w.stride(0), float(s), NORMALIZED=bool(normalized), SMOOTH=bool(smoothing),
        IEEE=emb_q.dtype == torch.float32, BLOCK_B=bb, BLOCK_C=bc, BLOCK_D=bd)
    m_s, se_s, zs_s = outs
    m = m_s.amax(0)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    se = (se_s * torch.exp(m_s - safe.unsqueeze(0))).sum(0)
    return m, se, zs_s.sum(0)
