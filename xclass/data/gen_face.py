"""Synthetic "faces": small RGB images from class-specific smooth patterns.

Class ``c`` owns ``blobs`` coloured Gaussian blobs (centre, width, colour) and one coloured
sinusoidal texture, all hashed from ``(seed, c)``. Each image shifts the whole pattern by a
random ``(dx, dy)`` (``shift`` px std), scales brightness/contrast, adds one class-free
"nuisance" blob and pixel noise. A single pixel is a weak cue (shifts + nuisance), while the
whole image identifies the class: a model has to learn, a nearest-mean baseline is above chance.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pyarrow as pa

from xclass.data.synth import hash_uniform
from xclass.data.writer import fixed_list, with_task_meta


class FaceGenerator:
    """Rows ``id, label, image`` with ``image`` = fixed_size_list<uint8>[H*W*3] (HWC order)."""

    task = "face"
    row_group_rows = 4096
    chunk_rows = 2048

    def __init__(self, seed: int, image_size: int = 32, blobs: int = 3, shift: float = 1.5,
                 noise: float = 0.25, nuisance: float = 0.6) -> None:
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        self.seed, self.size, self.blobs = seed, image_size, blobs
        self.shift, self.noise, self.nuisance = shift, noise, nuisance
        self.channels = 3

    def input_meta(self) -> Dict:
        s = self.size
        return {"image": {"height": s, "width": s, "channels": self.channels, "dtype": "uint8",
                          "layout": "HWC"}}

    def schema(self) -> pa.Schema:
        s = self.size
        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()),
                            ("image", pa.list_(pa.uint8(), s * s * self.channels))])
        return with_task_meta(schema, self.task, height=s, width=s, channels=self.channels)

    def _blob(self, cx, cy, sigma, color, yy, xx) -> np.ndarray:
        """Gaussian blobs [n, S, S, 3]: cx, cy, sigma [n, 1, 1]; color [n, 3]."""
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
        return g[..., None] * color[:, None, None, :]

    def pattern(self, labels: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Class pattern [n, S, S, 3] (float32, roughly in [-1.5, 1.5]) shifted by (dx, dy) px."""
        s = self.size
        c = labels[:, None]
        yy, xx = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32),
                             indexing="ij")
        img = np.zeros((len(labels), s, s, 3), dtype=np.float32)
        for k in range(self.blobs):
            u = hash_uniform(self.seed, c, k, np.arange(6)).astype(np.float32)  # [n, 6]
            cx = (0.2 + 0.6 * u[:, 0])[:, None, None] * s + dx[:, None, None]
            cy = (0.2 + 0.6 * u[:, 1])[:, None, None] * s + dy[:, None, None]
            sigma = (0.08 + 0.15 * u[:, 2])[:, None, None] * s
            img += self._blob(cx, cy, sigma, 2 * u[:, 3:6] - 1, yy, xx)
        u = hash_uniform(self.seed, c, 100, np.arange(6)).astype(np.float32)
        fx, fy = (u[:, 0] * 4 - 2) / s, (u[:, 1] * 4 - 2) / s  # up to 2 cycles per image
        phase = 2 * np.pi * u[:, 2] - 2 * np.pi * (fx * dx + fy * dy)
        wave = np.cos(2 * np.pi * (fx[:, None, None] * xx + fy[:, None, None] * yy) + phase[:, None, None])
        img += 0.5 * wave[..., None] * (2 * u[:, None, None, 3:6] - 1)
        return img

    def images(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 images [n, S, S, 3] of classes ``labels`` with fresh intra-class variation."""
        n, s = len(labels), self.size
        dx = rng.normal(0, self.shift, n).astype(np.float32)
        dy = rng.normal(0, self.shift, n).astype(np.float32)
        img = self.pattern(labels, dx, dy)
        yy, xx = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32),
                             indexing="ij")
        u = rng.random((n, 6)).astype(np.float32)
        img += self.nuisance * self._blob((u[:, 0] * s)[:, None, None], (u[:, 1] * s)[:, None, None],
                                          (0.1 + 0.2 * u[:, 2])[:, None, None] * s,
                                          2 * u[:, 3:6] - 1, yy, xx)
        gain = rng.uniform(0.7, 1.3, (n, 1, 1, 1)).astype(np.float32)
        offset = rng.normal(0, 0.15, (n, 1, 1, 1)).astype(np.float32)
        img = gain * img + offset + rng.normal(0, self.noise, img.shape).astype(np.float32)
        return np.clip(128 + 60 * img, 0, 255).astype(np.uint8)

    def rows(self, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Dict[str, pa.Array]:
        img = self.images(labels, rng)
        return {"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                "image": fixed_list(img.reshape(len(ids), -1), pa.uint8())}
