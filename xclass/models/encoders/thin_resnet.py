"""Thin ResNet speaker encoder (wespeaker/voxceleb_trainer ResNet34-style, sized by params).

fbank ``[B, T, n_mels]`` is a 1-channel image ``[B, 1, n_mels, T]``; basic residual blocks
(conv3x3-BN-ReLU-conv3x3-BN + shortcut) in stages that halve frequency and time; then
masked statistics pooling (mean + std over valid frames of the flattened C*F' map) ->
Linear -> BN. Time lengths are downsampled with each stride-2 conv (ceil(L / 2)) and every
conv input is zero beyond them, as in ``xclass.models.layers``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xclass.models.layers import MaskedBatchNorm2d, length_mask, masked_mean_std
from xclass.models.registry import meta_get, register_encoder


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = MaskedBatchNorm2d(c_out)
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            self.proj_bn = MaskedBatchNorm2d(c_out)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple:
        """``x [B, C, F, T]`` zero beyond ``lengths`` -> (``[B, C', F', T']``, new lengths)."""
        if self.stride != 1:
            lengths = (lengths + self.stride - 1) // self.stride
        t = (x.shape[-1] + self.stride - 1) // self.stride
        mask = length_mask(lengths, t)
        h = F.relu(self.bn1(self.conv1(x), mask))
        h = self.bn2(self.conv2(h), mask)
        short = x if self.proj is None else self.proj_bn(self.proj(x), mask)
        return F.relu(h + short), lengths


class ThinResNet(nn.Module):
    """``fbank [B, T, n_mels]``, ``lengths [B]`` -> ``[B, d]``."""

    def __init__(self, n_mels: int, embedding_dim: int, widths: Sequence[int],
                 layers: Sequence[int]) -> None:
        super().__init__()
        if len(widths) != len(layers) or not widths:
            raise ValueError(f"thin_resnet: 'widths' {list(widths)} and 'layers' "
                             f"{list(layers)} must be non-empty and of equal length")
        self.n_mels = n_mels
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.stem_bn = MaskedBatchNorm2d(widths[0])
        blocks, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, layers)):
            for j in range(n):
                blocks.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.blocks = nn.ModuleList(blocks)
        f = n_mels
        for _ in widths[1:]:
            f = (f + 1) // 2
        self.fc = nn.Linear(2 * c * f, embedding_dim)
        self.out_bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        fb, lengths = inputs["fbank"], inputs["lengths"]
        if fb.shape[-1] != self.n_mels:
            raise ValueError(f"thin_resnet: 'fbank' has {fb.shape[-1]} mel bins, "
                             f"meta.json says n_mels={self.n_mels}")
        mask = length_mask(lengths, fb.shape[1])
        x = (fb.to(self.fc.weight.dtype) * mask.unsqueeze(-1)).transpose(1, 2).unsqueeze(1)
        x = F.relu(self.stem_bn(self.stem(x), mask))
        for block in self.blocks:
            x, lengths = block(x, lengths)
        b, c, f, t = x.shape
        mu, sd = masked_mean_std(x.reshape(b, c * f, t), length_mask(lengths, t).unsqueeze(1))
        return self.out_bn(self.fc(torch.cat([mu, sd], dim=1)))


@register_encoder("thin_resnet", tasks=("speaker",))
def thin_resnet(meta: Dict[str, Any], embedding_dim: int, *,
                widths: Sequence[int] = (8, 16, 32, 64),
                layers: Sequence[int] = (1, 1, 1, 1)) -> ThinResNet:
    """Thin ResNet over ``fbank``/``lengths``; needs ``n_mels`` in meta.json.

    wespeaker ResNet34 is widths (32, 64, 128, 256), layers (3, 4, 6, 3).
    """
    return ThinResNet(int(meta_get(meta, "n_mels", "encoder 'thin_resnet'", "fbank")),
                      embedding_dim, tuple(widths), tuple(layers))
