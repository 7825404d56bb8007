"""Face geometry for ``import faces``: 5-point similarity alignment to the ArcFace template,
crop boxes, and the per-image CSV files that give them.

Coordinates are in pixels with the CENTRE of pixel (i, j) at x = j, y = i (OpenCV's convention,
the one landmark detectors report). The 5 points are left eye, right eye, nose tip, left and
right mouth corner, in the image as seen (the subject's right eye is the "left eye").
"""
from __future__ import annotations

import csv
import os
from typing import Dict, Optional, Tuple

import numpy as np

from xclass.importers.common import ImportError_
from xclass.importers.inputs import text_lines

#: The standard 112 x 112 ArcFace / insightface 5-point template (x, y).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) mapping ``src`` [n, 2]
    onto ``dst`` [n, 2] (Umeyama 1991, as skimage's SimilarityTransform). Returns a 2 x 3 matrix
    ``M`` with ``dst ~ M[:, :2] @ p + M[:, 2]``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    r = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("landmarks are all the same point")
    scale = (sig * d).sum() / var_s
    return np.c_[scale * r, mu_d - scale * r @ mu_s]


def align_5points(im, landmarks: np.ndarray, size: int):
    """Warp a PIL image so that its 5 ``landmarks`` [5, 2] land on the ArcFace template scaled
    to ``size`` / 112; returns a ``size`` x ``size`` PIL image (bilinear, black outside)."""
    from PIL import Image

    template = ARCFACE_TEMPLATE * (size / 112.0)
    m = umeyama(template, landmarks)            # output (template) coordinates -> input coordinates
    a = m[:, :2]
    # Pillow samples input point A (out + 0.5) + c in a pixel-corner frame; in the centre frame
    # that is in = A out + (A 0.5 + c - 0.5), so c = t + 0.5 - A 0.5 for in = A out + t.
    c = m[:, 2] + 0.5 - a @ np.array([0.5, 0.5])
    data = (a[0, 0], a[0, 1], c[0], a[1, 0], a[1, 1], c[1])
    return im.transform((size, size), Image.AFFINE, data, resample=Image.BILINEAR)


def square_box(box: Tuple[float, float, float, float]) -> Tuple[int, int, int, int]:
    """The square (left, top, right, bottom) of side max(width, height) centred on ``box``."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    return left, top, left + int(round(side)), top + int(round(side))


def parse_box(text: str) -> Tuple[float, float, float, float]:
    """``--crop-box x0,y0,x1,y1`` -> floats; x1 > x0 and y1 > y0."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise ImportError_(f"--crop-box {text!r}: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    return box  # type: ignore[return-value]


def read_point_csv(path: str, root: str, n_values: int, what: str) -> Dict[str, np.ndarray]:
    """A CSV with a header row; column 1 = image path relative to ``root``, then ``n_values``
    numbers (landmarks: x1,y1,...,x5,y5; boxes: x0,y0,x1,y1). Returns {absolute path: values}."""
    if not os.path.isfile(path):
        raise ImportError_(f"{path}: {what} file not found", file=path)
    out: Dict[str, np.ndarray] = {}
    rows = csv.reader(text_lines(path))                       # a byte that is not UTF-8: DataError
    next(rows, None)
    for line, rec in enumerate(rows, start=2):
        if not rec or not "".join(rec).strip():
            continue
        try:
            vals = np.array([float(v) for v in rec[1:]], np.float64)
        except ValueError:
            vals = np.array([])
        if len(vals) != n_values or not np.isfinite(vals).all():
            raise ImportError_(f"{path}: line {line}: expected a file name and {n_values} numbers ({what})",
                               file=path, row=line)
        out[os.path.normpath(os.path.join(root, rec[0].strip()))] = vals
    return out


def lookup(table: Optional[Dict[str, np.ndarray]], path: str, csv_path: str, what: str) -> Optional[np.ndarray]:
    """The row of ``path`` in a :func:`read_point_csv` table (None when no table)."""
    if table is None:
        return None
    key = os.path.normpath(path)
    if key not in table:
        raise ImportError_(f"{path}: no {what} in {csv_path}", file=path)
    return table[key]
