"""ECAPA-TDNN-style speaker encoder (Desplanques et al. 2020), length-masked.

fbank -> (optional per-utterance mean normalisation) -> Conv(k5) -> SE-Res2 blocks with dilations ->
multi-layer feature aggregation (concat of the block outputs, 1x1 conv) -> attentive
statistics pooling with global context -> BN -> FC -> BN.  Every convolution input is zero
at padded frames (see ``xclass.models.layers``), so padding never changes an embedding.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from xclass.models.layers import ConvReluBN, length_mask, masked_mean, masked_mean_std
from xclass.models.registry import meta_get, register_encoder


class SEBlock(nn.Module):
    """Squeeze-excitation with a masked time mean: ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, bottleneck), nn.ReLU(),
                                nn.Linear(bottleneck, channels), nn.Sigmoid())

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        s = masked_mean(x, mask.unsqueeze(1), -1)          # [B, C]
        return x * self.fc(s).unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 unit -> Res2 (``scale`` chained dilated k3 units) -> 1x1 unit -> SE, + residual."""

    def __init__(self, channels: int, dilation: int, scale: int, se_bottleneck: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"ecapa: channels={channels} must be divisible by scale={scale}")
        width = channels // scale
        self.scale = scale
        self.pre = ConvReluBN(channels, channels, 1)
        self.res2 = nn.ModuleList(ConvReluBN(width, width, 3, dilation) for _ in range(scale - 1))
        self.post = ConvReluBN(channels, channels, 1)
        self.se = SEBlock(channels, se_bottleneck)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, C, T]`` zero at padding -> same shape, zero at padding."""
        parts = torch.chunk(self.pre(x, mask), self.scale, dim=1)
        outs, y = [parts[0]], None
        for i, unit in enumerate(self.res2):
            y = unit(parts[i + 1] if y is None else parts[i + 1] + y, mask)
            outs.append(y)
        h = self.se(self.post(torch.cat(outs, dim=1), mask), mask)
        return h + x


class AttentiveStatsPool(nn.Module):
    """Channel-dependent attentive mean+std over valid frames: ``[B, C, T] -> [B, 2C]``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.att = ConvReluBN(3 * channels, hidden, 1)
        self.score = nn.Conv1d(hidden, channels, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(1)                                   # [B, 1, T]
        mu, sd = masked_mean_std(h, m)
        t = h.shape[-1]
        ctx = torch.cat([h, mu.unsqueeze(-1).expand(-1, -1, t) * m,
                         sd.unsqueeze(-1).expand(-1, -1, t) * m], dim=1)
        logits = self.score(torch.tanh(self.att(ctx, mask)))    # [B, C, T]
        w = torch.softmax(logits.masked_fill(~m, float("-inf")), dim=-1)
        mean = (w * h).sum(-1)
        var = (w * h * h).sum(-1) - mean * mean
        return torch.cat([mean, var.clamp_min(1e-5).sqrt()], dim=1)


class ECAPA(nn.Module):
    """``fbank [B, T, n_mels]`` float, ``lengths [B]`` int -> ``[B, d]``."""

    def __init__(self, n_mels: int, embedding_dim: int, channels: int,
                 dilations: Sequence[int], scale: int, mfa_channels: int,
                 attention_dim: int, se_bottleneck: int, cmn: bool) -> None:
        super().__init__()
        self.n_mels, self.cmn = n_mels, cmn
        self.stem = ConvReluBN(n_mels, channels, 5)
        self.blocks = nn.ModuleList(SERes2Block(channels, d, scale, se_bottleneck)
                                    for d in dilations)
        self.mfa = ConvReluBN(channels * len(dilations), mfa_channels, 1)
        self.pool = AttentiveStatsPool(mfa_channels, attention_dim)
        self.pool_bn = nn.BatchNorm1d(2 * mfa_channels)
        self.fc = nn.Linear(2 * mfa_channels, embedding_dim)
        self.out_bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        fb, lengths = inputs["fbank"], inputs["lengths"]
        if fb.shape[-1] != self.n_mels:
            raise ValueError(f"ecapa: 'fbank' has {fb.shape[-1]} mel bins, "
                             f"meta.json says n_mels={self.n_mels}")
        mask = length_mask(lengths, fb.shape[1])                # [B, T]
        x = fb.to(self.fc.weight.dtype).transpose(1, 2)         # [B, F, T]
        m = mask.unsqueeze(1)
        if self.cmn:  # per-utterance mean normalisation, over valid frames only
            x = x - masked_mean(x, m, -1, keepdim=True)
        x = x * m
        h = self.stem(x, mask)
        feats = []
        for block in self.blocks:
            h = block(h, mask)
            feats.append(h)
        h = self.mfa(torch.cat(feats, dim=1), mask)
        return self.out_bn(self.fc(self.pool_bn(self.pool(h, mask))))


@register_encoder("ecapa", tasks=("speaker",))
def ecapa(meta: Dict[str, Any], embedding_dim: int, *, channels: int = 64,
          dilations: Sequence[int] = (2, 3, 4), scale: int = 4, mfa_channels: int = 192,
          attention_dim: int = 64, se_bottleneck: int = 32, cmn: bool = False) -> ECAPA:
    """ECAPA over ``fbank``/``lengths``; needs ``n_mels`` in meta.json.

    ECAPA-TDNN (C=512) is channels 512, scale 8, mfa_channels 1536, attention_dim 128,
    se_bottleneck 128. ``cmn`` subtracts each utterance's mean fbank frame (leave it off
    when the features are already mean-normalised, or when, as in the synthetic data, the
    speaker identity lives in the mean spectrum).
    """
    return ECAPA(int(meta_get(meta, "n_mels", "encoder 'ecapa'", "fbank")), embedding_dim, channels,
                 tuple(dilations), scale, mfa_channels, attention_dim, se_bottleneck, cmn)
