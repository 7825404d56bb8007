"""iResNet face encoder (the arcface_torch layout, sized by parameters).

Block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus a (conv1x1-BN) shortcut
when the shape changes. Each stage starts with a stride-2 block. Head: BN -> Dropout ->
flatten -> FC -> BN1d, as in arcface_torch ("features" BN on the embedding).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from xclass.models.registry import meta_get, register_encoder


class IBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in, eps=1e-5),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5),
            nn.PReLU(c_out),
            nn.Conv2d(c_out, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


def _downsampled(size: int, stages: int) -> int:
    for _ in range(stages):
        size = (size + 1) // 2  # 3x3 conv, stride 2, padding 1: ceil(size / 2)
    return size


class IResNet(nn.Module):
    """``image [B, C, H, W]`` uint8 (or float already in [0, 255]) -> ``[B, d]``."""

    def __init__(self, height: int, width: int, channels: int, embedding_dim: int,
                 widths: Sequence[int], layers: Sequence[int], stem_width: int,
                 dropout: float) -> None:
        super().__init__()
        if len(widths) != len(layers) or not widths:
            raise ValueError(f"iresnet: 'widths' {list(widths)} and 'layers' {list(layers)} "
                             "must be non-empty and of equal length")
        self.shape = (channels, height, width)
        self.stem = nn.Sequential(nn.Conv2d(channels, stem_width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_width, eps=1e-5), nn.PReLU(stem_width))
        blocks, c = [], stem_width
        for w, n in zip(widths, layers):
            for i in range(n):
                blocks.append(IBasicBlock(c, w, stride=2 if i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        h, w_ = _downsampled(height, len(widths)), _downsampled(width, len(widths))
        self.bn = nn.BatchNorm2d(c, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c * h * w_, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        img = inputs["image"]
        if tuple(img.shape[1:]) != self.shape:
            raise ValueError(f"iresnet: 'image' has shape {tuple(img.shape[1:])}, "
                             f"meta.json says (C, H, W) = {self.shape}")
        dtype = self.fc.weight.dtype
        x = (img.to(dtype) / 255.0 - 0.5) / 0.5
        x = self.blocks(self.stem(x))
        x = self.dropout(torch.flatten(self.bn(x), 1))
        return self.features(self.fc(x))


@register_encoder("iresnet", tasks=("face",))
def iresnet(meta: Dict[str, Any], embedding_dim: int, *,
            widths: Sequence[int] = (16, 32, 64), layers: Sequence[int] = (1, 1, 1),
            stem_width: int = 16, dropout: float = 0.0) -> IResNet:
    """iResNet over ``image``; needs ``height``, ``width``, ``channels`` in meta.json.

    arcface_torch iresnet50 at 112 px is widths (64, 128, 256, 512), layers (3, 4, 14, 3),
    stem_width 64 (the 7x7 map it flattens is what 4 stride-2 stages leave of 112 px).
    """
    h, w, c = (int(meta_get(meta, k, "encoder 'iresnet'", "image"))
               for k in ("height", "width", "channels"))
    return IResNet(h, w, c, embedding_dim, tuple(widths), tuple(layers), stem_width, dropout)
