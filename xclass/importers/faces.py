"""Face images -> the face Parquet schema (``image`` fixed_size_list<uint8>[S*S*C], HWC; C = 3
RGB, or 1 with ``grayscale``).

Input: a folder tree with one folder per identity (PGM, PNG, JPEG, BMP via Pillow). Geometry, in
order of precedence (:mod:`xclass.importers.face_align`):

- ``landmarks_csv``: 5 points per image, similarity-aligned to the ArcFace template scaled to
  ``size`` (the insightface ``norm_crop`` geometry);
- ``boxes_csv`` (per image) or ``crop_box`` (every image): the box widened to a square about its
  centre, cropped (black outside the image) and resized to ``size`` x ``size``;
- otherwise resized so its SHORTER side is ``size`` (bilinear) and center-cropped (AT&T/ORL-style
  or pre-aligned crops keep their framing).
"""
from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

from xclass.data.writer import atomic_dir, fixed_list, with_task_meta
from xclass.importers.common import ImportError_, SplitWriters, discover, finish, progress
from xclass.importers.face_align import align_5points, lookup, parse_box, read_point_csv, square_box
from xclass.importers.inputs import decode_in_order
from xclass.importers.protocols import plan_splits

#: largest image accepted (pixels): far above any face photo, far below a decompression bomb
MAX_PIXELS = 40_000_000

IMAGE_EXTS = (".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".ppm")


@dataclass(frozen=True)
class FaceGeometry:
    """How each image is framed (see the module doc); tables map absolute paths to values."""

    grayscale: bool = False
    crop_box: Optional[tuple] = None
    boxes: Optional[Dict[str, np.ndarray]] = None
    boxes_csv: str = ""
    landmarks: Optional[Dict[str, np.ndarray]] = None
    landmarks_csv: str = ""

    @classmethod
    def from_options(cls, root: str, grayscale: bool = False, crop_box: Optional[str] = None,
                     boxes_csv: Optional[str] = None, landmarks_csv: Optional[str] = None) -> "FaceGeometry":
        return cls(grayscale, parse_box(crop_box) if crop_box else None,
                   read_point_csv(boxes_csv, root, 4, "crop boxes x0,y0,x1,y1") if boxes_csv else None,
                   boxes_csv or "",
                   read_point_csv(landmarks_csv, root, 10, "5 landmarks x1,y1,...,x5,y5") if landmarks_csv else None,
                   landmarks_csv or "")

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


def _frame(im, path: str, size: int, geo: FaceGeometry):
    from PIL import Image

    lmk = lookup(geo.landmarks, path, geo.landmarks_csv, "landmarks")
    if lmk is not None:
        return align_5points(im, lmk.reshape(5, 2), size)
    box = lookup(geo.boxes, path, geo.boxes_csv, "crop box")
    box = tuple(box) if box is not None else geo.crop_box
    if box is not None:
        return im.crop(square_box(box)).resize((size, size), Image.BILINEAR)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_face(path: str, size: int, geo: FaceGeometry = FaceGeometry()) -> np.ndarray:
    """uint8 [size, size, C] framed as ``geo`` says. Raises ImportError_ naming ``path`` when
    Pillow cannot read it or it has no row in a landmarks / boxes CSV."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:  # checked from the header, before decoding
                raise ValueError(f"{im.size[0]}x{im.size[1]} pixels exceeds the {MAX_PIXELS} limit "
                                 "(decompression bomb?)")
            im = _frame(im.convert("L" if geo.grayscale else "RGB"), path, size, geo)
            return np.asarray(im, dtype=np.uint8).reshape(size, size, geo.channels)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        if isinstance(exc, ImportError_):
            raise
        raise ImportError_(f"{path}: cannot read image ({exc})", file=path) from None


def face_schema(size: int, channels: int = 3) -> pa.Schema:
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()),
                        ("image", pa.list_(pa.uint8(), size * size * channels))])
    return with_task_meta(schema, "face", height=size, width=size, channels=channels)


def _to_arrow(rows: List[dict]) -> Dict[str, pa.Array]:
    return {"id": pa.array([r["id"] for r in rows], pa.int64()),
            "label": pa.array([r["label"] for r in rows], pa.int64()),
            "image": fixed_list(np.stack([r["image"].reshape(-1) for r in rows]), pa.uint8())}


def import_faces(root: str, out: str, *, size: int = 112, test_classes: int = 0,
                 test_regex: Optional[str] = None, label_regex: Optional[str] = None, num_pairs: int = 6000,
                 seed: int = 0, overwrite: bool = False, show_progress: bool = True,
                 impostor_ratio: float = 1.0, grayscale: bool = False, crop_box: Optional[str] = None,
                 boxes_csv: Optional[str] = None, landmarks_csv: Optional[str] = None,
                 pairs_file: Optional[str] = None, workers: int = 1, test_only: bool = False) -> Dict:
    """Import a face folder tree into ``out`` (train.parquet, test.parquet + pairs.parquet when
    a test split is requested, meta.json). Returns the meta dict. ``crop_box`` "x0,y0,x1,y1";
    ``boxes_csv`` / ``landmarks_csv``: see :func:`~xclass.importers.face_align.read_point_csv`.
    ``pairs_file``: a published protocol (LFW ``pairs.txt``, a pair list) as the test split and
    its pairs (:mod:`~xclass.importers.protocols`). ``workers``: processes decoding images (rows
    come out in the same order as with one). ``test_only``: every file in the test split (no
    training classes; pairs only with --num-pairs > 0 and two classes or more)."""
    if size < 4:
        raise ImportError_(f"--size must be >= 4, got {size}")
    geo = FaceGeometry.from_options(root, grayscale, crop_box, boxes_csv, landmarks_csv)
    plan = plan_splits(discover(root, IMAGE_EXTS, label_regex), root, pairs_file, "--pairs-file",
                       test_classes=test_classes, test_regex=test_regex, seed=seed, test_only=test_only)
    items = plan.items
    with atomic_dir(out, overwrite=overwrite) as tmp:
        w = SplitWriters(tmp, face_schema(size, geo.channels), _to_arrow)
        with closing(decode_in_order(partial(load_face, size=size, geo=geo), [it.path for it in items],
                                     workers)) as images:          # closing: the worker pool ends here
            for i, (it, image) in enumerate(progress(zip(items, images), len(items), "import faces", show_progress)):
                w.add(it.split, {"id": i, "label": it.label, "image": image}, source=it.relative(root))
        inputs = {"image": {"height": size, "width": size, "channels": geo.channels, "dtype": "uint8",
                            "layout": "HWC", "alignment": _alignment(geo)}}
        source = {"importer": "faces", "root": os.path.abspath(root), "files": len(items),
                  **({"protocol": plan.file} if plan.file else {})}
        return finish(tmp, "face", w, plan.train_names, plan.test_names, inputs, source, num_pairs, seed,
                      impostor_ratio, plan.table({i: i for i in range(len(items))}), test_only=test_only)


def _alignment(geo: FaceGeometry) -> str:
    if geo.landmarks is not None:
        return "arcface-5point"
    return "box" if geo.boxes is not None or geo.crop_box is not None else "center-crop"
