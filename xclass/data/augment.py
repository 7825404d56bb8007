"""Training-time input augmentation, applied to a decoded batch already on the run's device.

``data.hflip`` = p: each face image of the batch is mirrored left-right with probability p (the
horizontal flip of arcface_torch / insightface training, 0.5 there). The mask is drawn with the
global RNG of the images' device in the training loop's thread, so a run is reproducible and a
resumed run continues the same draws (checkpoints hold that RNG); no host sync.
``export-index --flip-test`` encodes each image and its mirror and sums the two embeddings
(insightface's flip test).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

Inputs = Dict[str, torch.Tensor]


def mirrored(inputs: Inputs) -> Inputs:
    """``inputs`` with its ``image`` [B, C, H, W] (this rank's rows) mirrored along W."""
    return {**inputs, "image": inputs["image"].flip(-1)}


def hflip(inputs: Inputs, p: float) -> Inputs:
    """Each row's ``image`` [B, C, H, W] mirrored with probability ``p`` (mask on its device)."""
    x = inputs.get("image")
    if x is None:
        return inputs
    flip = torch.rand(x.shape[0], device=x.device) < p
    return {**inputs, "image": torch.where(flip[:, None, None, None], x.flip(-1), x)}


def _identity(inputs: Inputs) -> Inputs:
    return inputs


def make_augment(data_cfg: Any) -> Callable[[Inputs], Inputs]:
    """The training loop's augmentation of a decoded batch (identity when none is configured)."""
    p = float(getattr(data_cfg, "hflip", 0.0))
    return _identity if p <= 0 else (lambda inputs: hflip(inputs, p))
