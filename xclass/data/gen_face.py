"""Synthetic "faces": small RGB images from class-specific smooth patterns.

Class ``c`` owns ``blobs`` coloured Gaussian blobs (centre, width, colour) and one coloured
sinusoidal texture, all hashed from ``(seed, c)``. Each image sees the pattern through a random
"pose" warp (rotation ``rotate`` degrees std, zoom ``zoom`` relative std, shift ``shift`` px std,
evaluated in closed form on the warped pixel grid, so no resampling blur), scales
brightness/contrast, adds one class-free "nuisance" blob, with probability ``occlude`` an
occluding rectangle (25-50 % of each side, random colour), and pixel noise. A single pixel is a
weak cue and raw-pixel nearest neighbours are far from perfect (pose + occluders), while the
whole pattern identifies the class: a model has to learn it (a random-init CNN does much worse).
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
                 noise: float = 0.25, nuisance: float = 0.6, rotate: float = 15.0, zoom: float = 0.1,
                 occlude: float = 0.5) -> None:
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        if not 0.0 <= occlude <= 1.0:
            raise ValueError(f"occlude is a probability in [0, 1], got {occlude}")
        self.seed, self.size, self.blobs = seed, image_size, blobs
        self.shift, self.noise, self.nuisance = shift, noise, nuisance
        self.rotate, self.zoom, self.occlude = rotate, zoom, occlude
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

    def warped_grid(self, dx: np.ndarray, dy: np.ndarray, angle: np.ndarray,
                    scale: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
        """Pattern coordinates (u, v) [n, S, S] of every pixel: rotate by ``angle`` (rad) and zoom
        by ``scale`` about the image centre, then shift by (dx, dy) px. Identity warp: u = x - dx."""
        s = self.size
        c0 = (s - 1) / 2.0
        yy, xx = np.meshgrid(np.arange(s, dtype=np.float32) - c0, np.arange(s, dtype=np.float32) - c0,
                             indexing="ij")
        ca, sa = (np.cos(angle) * scale)[:, None, None], (np.sin(angle) * scale)[:, None, None]
        u = c0 + ca * xx - sa * yy - dx[:, None, None]
        v = c0 + sa * xx + ca * yy - dy[:, None, None]
        return u.astype(np.float32), v.astype(np.float32)

    def pattern(self, labels: np.ndarray, dx: np.ndarray, dy: np.ndarray, angle: "np.ndarray | None" = None,
                scale: "np.ndarray | None" = None) -> np.ndarray:
        """Class pattern [n, S, S, 3] (float32, roughly in [-1.5, 1.5]) seen through the warp
        (rotation ``angle`` rad, zoom ``scale``, default none) and shifted by (dx, dy) px."""
        s, n = self.size, len(labels)
        c = labels[:, None]
        angle = np.zeros(n, np.float32) if angle is None else angle
        scale = np.ones(n, np.float32) if scale is None else scale
        uu, vv = self.warped_grid(dx, dy, angle, scale)
        img = np.zeros((n, s, s, 3), dtype=np.float32)
        for k in range(self.blobs):
            u = hash_uniform(self.seed, c, k, np.arange(6)).astype(np.float32)  # [n, 6]
            cx = (0.2 + 0.6 * u[:, 0])[:, None, None] * s
            cy = (0.2 + 0.6 * u[:, 1])[:, None, None] * s
            sigma = (0.08 + 0.15 * u[:, 2])[:, None, None] * s
            img += self._blob(cx, cy, sigma, 2 * u[:, 3:6] - 1, vv, uu)
        u = hash_uniform(self.seed, c, 100, np.arange(6)).astype(np.float32)
        fx, fy = (u[:, 0] * 4 - 2) / s, (u[:, 1] * 4 - 2) / s  # up to 2 cycles per image
        wave = np.cos(2 * np.pi * (fx[:, None, None] * uu + fy[:, None, None] * vv + u[:, 2, None, None]))
        img += 0.5 * wave[..., None] * (2 * u[:, None, None, 3:6] - 1)
        return img

    def _occluders(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """With probability ``occlude`` per image, paint a rectangle (25-50 % of each side) in a
        random colour: identity evidence is missing in a different place in every image."""
        n, s = img.shape[0], self.size
        u = rng.random((n, 8)).astype(np.float32)
        w, h = (0.25 + 0.25 * u[:, 0]) * s, (0.25 + 0.25 * u[:, 1]) * s
        x0, y0 = u[:, 2] * (s - w), u[:, 3] * (s - h)
        ar = np.arange(s, dtype=np.float32)
        inx = (ar[None, :] >= x0[:, None]) & (ar[None, :] < (x0 + w)[:, None])  # [n, S]
        iny = (ar[None, :] >= y0[:, None]) & (ar[None, :] < (y0 + h)[:, None])
        mask = iny[:, :, None] & inx[:, None, :] & (u[:, 4] < self.occlude)[:, None, None]
        color = (2 * u[:, 5:8] - 1)[:, None, None, :]
        return np.where(mask[..., None], color, img)

    def images(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 images [n, S, S, 3] of classes ``labels`` with fresh intra-class variation."""
        n, s = len(labels), self.size
        dx = rng.normal(0, self.shift, n).astype(np.float32)
        dy = rng.normal(0, self.shift, n).astype(np.float32)
        angle = np.deg2rad(rng.normal(0, self.rotate, n)).astype(np.float32)
        scale = np.exp(rng.normal(0, self.zoom, n)).astype(np.float32)
        img = self.pattern(labels, dx, dy, angle, scale)
        yy, xx = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32),
                             indexing="ij")
        u = rng.random((n, 6)).astype(np.float32)
        img += self.nuisance * self._blob((u[:, 0] * s)[:, None, None], (u[:, 1] * s)[:, None, None],
                                          (0.1 + 0.2 * u[:, 2])[:, None, None] * s,
                                          2 * u[:, 3:6] - 1, yy, xx)
        img = self._occluders(img, rng)
        gain = rng.uniform(0.7, 1.3, (n, 1, 1, 1)).astype(np.float32)
        offset = rng.normal(0, 0.15, (n, 1, 1, 1)).astype(np.float32)
        img = gain * img + offset + rng.normal(0, self.noise, img.shape).astype(np.float32)
        return np.clip(128 + 60 * img, 0, 255).astype(np.uint8)

    def rows(self, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Dict[str, pa.Array]:
        img = self.images(labels, rng)
        return {"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                "image": fixed_list(img.reshape(len(ids), -1), pa.uint8())}
