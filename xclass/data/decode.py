"""Batch decoders: reader batches (numpy) -> dense model inputs (numpy, float32 / int).

Each takes the reader's ``dict[str, np.ndarray]`` layout (see ``reader``) and returns
arrays whose first dimension is the local batch ``B`` (sharded over the batch).
"""
from __future__ import annotations

import io
from typing import Dict, Tuple

import numpy as np

from xclass.data.schema import DataError


def decode_images(images: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """Images -> uint8 ``[B, H, W, C]``.

    ``images`` is either the fixed-size layout ``[B, H*W*C]`` uint8, or an object array of
    encoded PNG/JPEG bytes (decoded with Pillow, which is then required).
    """
    h, w, c = shape
    if images.dtype != object:
        return images.reshape(len(images), h, w, c)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError("binary (PNG/JPEG) images need Pillow: pip install pillow") from None
    out = np.empty((len(images), h, w, c), dtype=np.uint8)
    for i, raw in enumerate(images):
        img = Image.open(io.BytesIO(raw)).convert("RGB" if c == 3 else "L")
        if img.size != (w, h):
            img = img.resize((w, h))
        out[i] = np.asarray(img).reshape(h, w, c)
    return out


def pad_ragged(values: np.ndarray, offsets: np.ndarray, row_width: int = 1,
               max_len: int | None = None, pad: float = 0) -> Tuple[np.ndarray, np.ndarray]:
    """CSR list column -> (padded ``[B, T, row_width]`` (squeezed if width 1), lengths ``[B]``).

    ``row_width`` groups values into frames (speaker fbank: ``n_mels``); ``max_len``
    truncates longer rows (keeps the first ``max_len`` frames).
    """
    lengths = np.diff(offsets) // row_width
    t = int(lengths.max(initial=0)) if max_len is None else max_len
    b = len(lengths)
    out = np.full((b, t, row_width), pad, dtype=values.dtype)
    frames = values.reshape(-1, row_width)
    keep = np.minimum(lengths, t)
    row = np.repeat(np.arange(b), keep)
    starts = offsets[:-1] // row_width
    pos = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
    out[row, pos] = frames[np.repeat(starts, keep) + pos]
    return (out[..., 0] if row_width == 1 else out), keep


def quic_inputs(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """QUIC packet columns -> ``seq`` float32 ``[B, N, 3]`` (size/1500, direction, log1p(iat ms))
    and ``stats`` float32 ``[B, S]`` (log1p of the flow statistics)."""
    seq = np.stack([batch["pkt_sizes"].astype(np.float32) / 1500.0,
                    batch["pkt_dirs"].astype(np.float32),
                    np.log1p(batch["pkt_iat"].astype(np.float32))], axis=-1)
    out = {"seq": seq}
    if "flow_stats" in batch:
        out["stats"] = np.log1p(np.maximum(batch["flow_stats"], 0)).astype(np.float32)
    return out
