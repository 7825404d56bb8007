"""A dataset directory's files: its meta.json and the Parquet files of a split."""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List

from xclass.data.schema import DataError


def load_meta(data_path: str) -> Dict[str, Any]:
    """The dataset's meta.json (written by ``xclass make-data`` or an importer)."""
    p = os.path.join(data_path, "meta.json")
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: dataset not found (run `xclass make-data` or set data.path)")
    try:
        with open(p) as f:
            meta = json.load(f)
    except ValueError as exc:  # JSON or UTF-8 decoding
        raise DataError(f"corrupt meta.json ({str(exc)[:200]})", file=p) from None
    if not isinstance(meta, dict):
        raise DataError("corrupt meta.json (not a JSON object)", file=p)
    return meta


def split_files(data_path: str, split: str) -> List[str]:
    """``DIR/split.parquet`` or the parts under ``DIR/split/``."""
    single = os.path.join(data_path, f"{split}.parquet")
    if os.path.exists(single):
        return [single]
    parts = sorted(glob.glob(os.path.join(data_path, split, "*.parquet")))
    if not parts:
        raise FileNotFoundError(f"{data_path}: no {split}.parquet or {split}/*.parquet")
    return parts
