"""Face images -> the face Parquet schema (``image`` fixed_size_list<uint8>[S*S*3], HWC RGB).

Input: a folder tree with one folder per identity (PGM, PNG, JPEG, BMP via Pillow). No alignment:
each image is converted to RGB, resized so its SHORTER side is ``size`` (bilinear), and
center-cropped to ``size`` x ``size`` (AT&T/ORL-style or pre-aligned crops keep their framing).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

from xclass.data.writer import atomic_dir, fixed_list, with_task_meta
from xclass.importers.common import ImportError_, SplitWriters, assign_splits, discover, finish, progress

#: largest image accepted (pixels): far above any face photo, far below a decompression bomb
MAX_PIXELS = 40_000_000

IMAGE_EXTS = (".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def load_face(path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: RGB, shorter side resized to ``size``, center crop. Raises
    ImportError_ naming ``path`` when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:  # checked from the header, before decoding
                raise ValueError(f"{im.size[0]}x{im.size[1]} pixels exceeds the {MAX_PIXELS} limit "
                                 "(decompression bomb?)")
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ImportError_(f"{path}: cannot read image ({exc})", file=path) from None


def face_schema(size: int) -> pa.Schema:
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("image", pa.list_(pa.uint8(), size * size * 3))])
    return with_task_meta(schema, "face", height=size, width=size, channels=3)


def _to_arrow(rows: List[dict]) -> Dict[str, pa.Array]:
    return {"id": pa.array([r["id"] for r in rows], pa.int64()),
            "label": pa.array([r["label"] for r in rows], pa.int64()),
            "image": fixed_list(np.stack([r["image"].reshape(-1) for r in rows]), pa.uint8())}


def import_faces(root: str, out: str, *, size: int = 112, test_classes: int = 0,
                 test_regex: Optional[str] = None, label_regex: Optional[str] = None, num_pairs: int = 6000,
                 seed: int = 0, overwrite: bool = False, show_progress: bool = True) -> Dict:
    """Import a face folder tree into ``out`` (train.parquet, test.parquet + pairs.parquet when
    a test split is requested, meta.json). Returns the meta dict."""
    if size < 4:
        raise ImportError_(f"--size must be >= 4, got {size}")
    items = discover(root, IMAGE_EXTS, label_regex)
    train_names, test_names = assign_splits(items, test_classes=test_classes, test_regex=test_regex, seed=seed)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        w = SplitWriters(tmp, face_schema(size), _to_arrow)
        for i, it in enumerate(progress(items, len(items), "import faces", show_progress)):
            w.add(it.split, {"id": i, "label": it.label, "image": load_face(it.path, size)})
        inputs = {"image": {"height": size, "width": size, "channels": 3, "dtype": "uint8", "layout": "HWC"}}
        return finish(tmp, "face", w, train_names, test_names, inputs,
                      {"importer": "faces", "root": os.path.abspath(root), "files": len(items)}, num_pairs, seed)
