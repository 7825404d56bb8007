"""Length-masked building blocks shared by the sequence encoders.

Invariant kept by every masked block: a ``[B, C, T]`` activation is exactly zero at
padded time steps (``t >= lengths[b]``). A convolution over such a tensor therefore sees
the same zeros that its own ``padding`` would supply if the example were encoded alone,
so an example's embedding does not depend on how much the batch pads it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def length_mask(lengths: Tensor, t_max: int) -> Tensor:
    """``lengths [B]`` int -> bool mask ``[B, T]`` (True = valid step)."""
    steps = torch.arange(t_max, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: Tensor, mask: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only ``mask`` (broadcastable to ``x``) positions.

    Rows with no valid position give 0 instead of NaN.
    """
    m = mask.to(x.dtype)
    total = (x * m).sum(dim, keepdim=keepdim)
    count = m.expand_as(x).sum(dim, keepdim=keepdim).clamp_min(1.0)
    return total / count


def masked_mean_std(x: Tensor, mask: Tensor, eps: float = 1e-5) -> tuple:
    """Masked mean and std over the last dim of ``x [B, C, T]`` with ``mask [B, 1, T]``."""
    mu = masked_mean(x, mask, -1, keepdim=True)
    var = masked_mean((x - mu) ** 2, mask, -1, keepdim=True)
    return mu.squeeze(-1), var.clamp_min(eps).sqrt().squeeze(-1)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``[B, C, T]`` whose statistics use valid steps only; padding stays 0.

    Padded zeros would otherwise bias the batch mean/variance by the batch's padding
    fraction (and the running statistics with it).
    """

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        """``x [B, C, T]``, ``mask [B, T]`` bool -> ``[B, C, T]`` (0 where ``~mask``)."""
        xt = x.transpose(1, 2)                       # [B, T, C]
        valid = xt[mask]                             # [N_valid, C]
        if self.training and valid.shape[0] <= 1:
            raise ValueError("MaskedBatchNorm1d needs more than one valid step in training")
        y = super().forward(valid)
        out = xt.new_zeros(xt.shape)
        out[mask] = y
        return out.transpose(1, 2)


class ConvReluBN(nn.Module):
    """Conv1d -> ReLU -> masked BN (the ECAPA-TDNN unit order); output is 0 at padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation,
                              padding=dilation * (kernel - 1) // 2)
        self.bn = MaskedBatchNorm1d(c_out)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, C_in, T]`` (0 at padding), ``mask [B, T]`` -> ``[B, C_out, T]``."""
        return self.bn(F.relu(self.conv(x)), mask)


def gem_pool(x: Tensor, mask: Tensor, p: Tensor, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling over valid steps: ``(mean_t x^p)^(1/p)``; ``x [B, C, T]`` >= 0."""
    m = mask.unsqueeze(1)
    pooled = masked_mean(x.clamp_min(eps).pow(p), m, -1)
    return pooled.clamp_min(eps).pow(1.0 / p)
