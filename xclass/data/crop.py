"""Random utterance crops for speaker training (``data.crop_frames``): every utterance longer
than N frames is cut to an N-frame window at a random start, a new one every epoch, as speaker
recipes train on 2-3 s chunks of long recordings. Done on the host in the prefetch thread, right
after decoding, so the batch that is padded, pinned and copied is at most N frames long.

The window of a row depends only on (seed, epoch, row id): the same on every rank and world size,
for any batch composition, and after a resume. Evaluation never crops."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch

Decoded = Tuple[Dict[str, torch.Tensor], torch.Tensor]

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def unit_hash(ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """float64 [n] in [0, 1): a splitmix64 hash of (seed, epoch, id) per row."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, np.int64).astype(np.uint64) + np.uint64((seed * 1_000_003 + epoch) & (2 ** 63 - 1)) * _MIX[0]
        z = (z ^ (z >> np.uint64(30))) * _MIX[1]
        z = (z ^ (z >> np.uint64(27))) * _MIX[2]
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


def crop_windows(fbank: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, frames: int):
    """``fbank`` [B, T, F] (rows padded after ``lengths`` [B]) -> ([B, min(T, frames), F], new
    lengths [B]): row b keeps frames ``starts[b] .. starts[b] + frames`` (zero-padded after its
    new length)."""
    t = min(int(fbank.shape[1]), frames)
    pos = starts[:, None] + torch.arange(t, device=fbank.device)[None, :]                 # [B, t]
    new_len = torch.minimum(lengths, torch.full_like(lengths, frames))
    keep = torch.arange(t, device=fbank.device)[None, :] < new_len[:, None]
    idx = pos.clamp(max=fbank.shape[1] - 1)[:, :, None].expand(-1, -1, fbank.shape[2])
    return torch.gather(fbank, 1, idx) * keep[:, :, None].to(fbank.dtype), new_len


class RandomCrop:
    """Wraps a decoder: ``crop(batch)`` = ``decode(batch)`` with the fbank rows cropped
    (:func:`crop_windows`, starts from :func:`unit_hash` of the batch's ``id`` column);
    ``set_epoch`` before each epoch."""

    def __init__(self, decode: Callable[[Dict[str, Any]], Decoded], frames: int, seed: int) -> None:
        self.decode, self.frames, self.seed, self.epoch = decode, int(frames), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: Dict[str, Any]) -> Decoded:
        inputs, labels = self.decode(batch)
        lengths = inputs["lengths"]
        slack = (lengths - self.frames).clamp(min=0).numpy()
        u = unit_hash(np.asarray(batch["id"]), self.seed, self.epoch)
        starts = torch.from_numpy(np.floor(u * (slack + 1)).astype(np.int64))
        inputs = dict(inputs)
        inputs["fbank"], inputs["lengths"] = crop_windows(inputs["fbank"], lengths, starts, self.frames)
        return inputs, labels
