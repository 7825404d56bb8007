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


def masked_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, mask: Tensor) -> Tensor:
    """Batch norm of ``x [B, C, ..., T]`` using only steps where ``mask [B, T]`` is True.

    Statistics are masked sums (no boolean indexing, hence no host-device sync on GPUs),
    kept in at least float32 whatever ``x``'s dtype; running statistics are updated as
    ``nn.BatchNorm`` does (unbiased variance, ``momentum``). Output is 0 at masked steps.
    """
    ct = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 stats lose too much
    m = mask.reshape(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1]).to(ct)
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.to(ct)
    if bn.training:
        count = m.expand(x.shape[0], 1, *x.shape[2:]).sum().clamp_min(1.0)
        mean = (xf * m).sum(dims) / count
        var = (((xf - mean.view(shape)) * m) ** 2).sum(dims) / count
        if bn.track_running_stats:
            with torch.no_grad():
                mom = bn.momentum if bn.momentum is not None else 0.1
                unbiased = var * count / (count - 1.0).clamp_min(1.0)
                bn.running_mean.mul_(1 - mom).add_(mom * mean.to(bn.running_mean.dtype))
                bn.running_var.mul_(1 - mom).add_(mom * unbiased.to(bn.running_var.dtype))
                bn.num_batches_tracked.add_(1)
    else:  # inference: one fused pass, x * scale + shift, then the mask in place
        scale = torch.rsqrt(bn.running_var.to(ct) + bn.eps)
        scale = scale * bn.weight.to(ct) if bn.affine else scale
        shift = -bn.running_mean.to(ct) * scale + (bn.bias.to(ct) if bn.affine else 0.0)
        return torch.addcmul(shift.view(shape), xf, scale.view(shape)).mul_(m).to(x.dtype)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.to(ct).view(shape) + bn.bias.to(ct).view(shape)
    return (y * m).to(x.dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``[B, C, T]`` whose statistics use valid steps only; padding stays 0.

    Padded zeros would otherwise bias the batch mean/variance by the batch's padding
    fraction (and the running statistics with it).
    """

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        """``x [B, C, T]``, ``mask [B, T]`` bool -> ``[B, C, T]`` (0 where ``~mask``)."""
        return masked_batch_norm(self, x, mask)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """The same over ``[B, C, F, T]`` (a time mask ``[B, T]``, every frequency row valid)."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return masked_batch_norm(self, x, mask)


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
