"""Launchers of the fused head's Triton kernels (CUDA; Triton's interpreter on CPU in tests). The
kernels live in xclass/heads/fused_kernels.py, imported only when one runs (importing Triton
takes about 0.4 s; xclass itself never needs it).

Forward statistics: one program handles ``BLOCK_B`` rows of the gathered batch and one split of the local classes;
it walks its class tiles of ``BLOCK_C`` rows of W, computes the score tile with ``tl.dot``
over ``BLOCK_D`` slices of d (bf16/fp16 inputs use tensor cores with fp32 accumulation; fp32
inputs use IEEE fp32 products, no TF32), accumulates the tile rows' squared norms in the same
loop (the row normalisation of W is fused: no normalised copy), scales by ``s / |w|``, puts the
margin's target logit in the target column and updates an online (max, sum exp, sum) per row.
Nothing of size [B, C] is written: each program stores three fp32 values per row, and
:func:`forward_stats` merges the splits. Index arithmetic is int64, so ``C * d`` and ``B * C``
above 2^31 are fine. One class row per class only (sub-centres use the chunked torch path).

The backward has two kernels that recompute the score tiles from ``lse`` (nothing saved but
O(B) stats): ``_bwd_dw_kernel`` (one program per tile of classes, looping over the batch)
accumulates ``dL/du = sum_i G_ij e_i`` for its rows in fp32 and applies the normalisation's
backward ``(g - u <u, g>) / |w|`` before the single store; ``_bwd_de_kernel`` (one program
per tile of rows, looping over the classes) accumulates ``dL/de_i = sum_j G_ij u_j``. Here
``G_ij = g_i s (p_ij - eps/N)`` with the target column zeroed (its gradient goes through the
margin, in torch). Both keep the whole (padded) d per tile, so the tiles shrink as d grows; on
CUDA the tile sizes are autotuned per padded d (128..512) and input precision.

Status: checked against the torch path on CPU under ``TRITON_INTERPRET=1``
(tests/heads/test_fused_triton.py); tests/heads/test_fused_gpu.py (marker ``gpu``) compares them
on a GPU. Never run on a GPU so far: the autotune configs are a first guess.
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Optional, Tuple

import torch

HAVE_TRITON = importlib.util.find_spec("triton") is not None  # imported only when a kernel runs


def _k():
    """The kernel module (imports Triton: about 0.4 s, paid only by a process that runs a kernel)."""
    from xclass.heads import fused_kernels

    return fused_kernels


def available(emb: torch.Tensor, k: int) -> bool:
    """The kernel runs for CUDA tensors (and for CPU tensors under Triton's interpreter,
    ``TRITON_INTERPRET=1``), one row per class, when Triton is installed."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return HAVE_TRITON and k == 1 and (emb.is_cuda or (interpret and emb.device.type == "cpu"))


def _blocks(b: int, d: int) -> Tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, BLOCK_D): 64 x 128 score tiles, d in slices of up to 64 (d = 128..512)."""
    return 64, 128, min(64, max(16, _k().triton.next_power_of_2(d)))


def forward_stats(emb_q: torch.Tensor, w: torch.Tensor, target: torch.Tensor, zt: torch.Tensor,
                  s: float, normalized: bool, smoothing: bool, splits: int = 0):
    """(row max [B], sum exp(z - max) [B], sum z [B]) over the local classes, fp32, as
    ``xclass.heads.fused._forward_stats`` (K = 1). emb_q [B, d] (normalised when ``normalized``),
    w [C_l, d] raw rows, target [B] local column or -1, zt [B] target logits."""
    K = _k()
    triton = K.triton
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
    K._fwd_stats_kernel[(row_blocks, splits)](
        emb_q, w, target.to(torch.int64).contiguous(), zt.float().contiguous(), *outs, b, c, d, per,
        emb_q.stride(0), w.stride(0), float(s), NORMALIZED=bool(normalized), SMOOTH=bool(smoothing),
        IEEE=emb_q.dtype == torch.float32, BLOCK_B=bb, BLOCK_C=bc, BLOCK_D=bd)
    m_s, se_s, zs_s = outs
    m = m_s.amax(0)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    se = (se_s * torch.exp(m_s - safe.unsqueeze(0))).sum(0)
    return m, se, zs_s.sum(0)


def backward(emb_q: torch.Tensor, w: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, gs: torch.Tensor,
             s: float, normalized: bool, sub: float, need_dw: bool = True,
             blocks: Optional[Tuple[int, int]] = None):
    """(dL/demb_q [B, d] fp32, dL/dw [C, d] in w's dtype or None) of the non-target logits, as the
    chunked torch loop of ``xclass.heads.fused._FusedCE.backward`` (K = 1). emb_q [B, d]
    replicated (normalised when ``normalized``; fp32/bf16/fp16), w [C, d] raw rows (sharded),
    target [B] local column or -1, lse [B] global log-sum-exp, gs [B] = g_i * s (0 on ignored
    rows), sub = eps / N (label smoothing). ``blocks``: fixed (BLOCK_B, BLOCK_C) instead of the
    CUDA autotuner (the interpreter tests use small tiles)."""
    K = _k()
    triton = K.triton
    b, d = emb_q.shape
    c = w.shape[0]
    emb_q, w = emb_q.contiguous(), w.contiguous()
    args = (target.to(torch.int64).contiguous(), lse.float().contiguous(), gs.float().contiguous())
    d_pad = max(16, triton.next_power_of_2(d))
    meta = dict(NORMALIZED=bool(normalized), IEEE=emb_q.dtype == torch.float32, D_PAD=d_pad)
    if blocks is None and not emb_q.is_cuda:  # the interpreter: no autotuner (it times on a GPU)
        blocks = (32, 32)
    de = torch.empty(b, d, device=emb_q.device, dtype=torch.float32)
    dw = torch.empty(c, d, device=w.device, dtype=torch.float32) if need_dw else None
    for out, kernel, tuned, axis in ((de, K._bwd_de_kernel, K._bwd_de_tuned, b), (dw, K._bwd_dw_kernel, K._bwd_dw_tuned, c)):
        if out is None:
            continue
        key = "BLOCK_B" if out is de else "BLOCK_C"
        call = (emb_q, w, *args, out, b, c, d, emb_q.stride(0), w.stride(0), out.stride(0), float(s), float(sub))
        if blocks is None:
            tuned[lambda m, n=axis, k=key: (triton.cdiv(n, m[k]),)](*call, **meta)
        else:
            size = dict(BLOCK_B=blocks[0], BLOCK_C=blocks[1])
            kernel[(triton.cdiv(axis, size[key]),)](*call, **size, **meta)
    return de, (dw.to(w.dtype) if dw is not None else None)
