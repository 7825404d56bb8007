"""Training-time input augmentation, applied to a decoded batch already on the run's device.

``data.hflip`` = p: each face image of the batch is mirrored left-right with probability p (the
horizontal flip of arcface_torch / insightface training, 0.5 there). The mask is drawn with the
global RNG of the images' device in the training loop's thread, so a run is reproducible and a
resumed run continues the same draws (checkpoints hold that RNG); no host sync.
``export-index --flip-test`` encodes each image and its mirror and sums the two embeddings
(insightface's flip test).

``data.spec_mask`` = p (speaker): with probability p a row's log-mel filterbank gets one band of
at most ``data.spec_mask_frames`` consecutive frames and one of at most ``data.spec_mask_bins``
consecutive mel bins (never all of a row's frames or bins) set to the row's mean over its valid frames (SpecAugment's time and
frequency masks as WeSpeaker applies them, where the mean is 0 after mean normalisation). Only
valid frames change; padding stays as it is.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

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


def spec_mask(inputs: Inputs, p: float, max_frames: int, max_bins: int) -> Inputs:
    """``fbank`` [B, T, F] (with ``lengths`` [B]) masked as the module doc says; all on its device."""
    x = inputs.get("fbank")
    if x is None:
        return inputs
    b, t, f = x.shape
    lengths = inputs["lengths"].to(x.device)
    u = torch.rand(b, 5, device=x.device)
    wt = torch.minimum((u[:, 1] * (max_frames + 1)).long(), (lengths - 1).clamp(min=0))   # a frame stays
    t0 = (u[:, 2] * (lengths - wt + 1).clamp(min=1)).long()
    wf = (u[:, 3] * (max_bins + 1)).long().clamp(max=f - 1)                                # a bin stays
    f0 = (u[:, 4] * (f - wf + 1)).long()
    tt, ff = torch.arange(t, device=x.device), torch.arange(f, device=x.device)
    valid = tt[None] < lengths[:, None]                                              # [B, T]
    band_t = (tt[None] >= t0[:, None]) & (tt[None] < (t0 + wt)[:, None])
    band_f = (ff[None] >= f0[:, None]) & (ff[None] < (f0 + wf)[:, None])             # [B, F]
    mask = (u[:, 0] < p)[:, None, None] & valid[:, :, None] & (band_t[:, :, None] | band_f[:, None, :])
    mean = (x * valid[:, :, None]).sum((1, 2)) / (valid.sum(1) * f).clamp(min=1)
    return {**inputs, "fbank": torch.where(mask, mean[:, None, None].to(x.dtype), x)}


def _identity(inputs: Inputs) -> Inputs:
    return inputs


def make_augment(data_cfg: Any) -> Callable[[Inputs], Inputs]:
    """The training loop's augmentation of a decoded batch (identity when none is configured)."""
    steps: List[Callable[[Inputs], Inputs]] = []
    p = float(getattr(data_cfg, "hflip", 0.0))
    if p > 0:
        steps.append(lambda inputs: hflip(inputs, p))
    q = float(getattr(data_cfg, "spec_mask", 0.0))
    if q > 0:
        frames, bins = int(data_cfg.spec_mask_frames), int(data_cfg.spec_mask_bins)
        steps.append(lambda inputs: spec_mask(inputs, q, frames, bins))
    if not steps:
        return _identity

    def augment(inputs: Inputs) -> Inputs:
        for step in steps:
            inputs = step(inputs)
        return inputs

    return augment
