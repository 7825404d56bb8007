"""A dataset directory's files: its meta.json and the Parquet files of a split."""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Dict, List, Sequence

from xclass.data.schema import DataError


def read_json_object(path: str, fail: Callable[[str], Exception]) -> Dict[str, Any]:
    """The JSON object in ``path``; text that is not JSON (or not UTF-8) or not an object raises
    ``fail(reason)``, the caller's error naming the file. A missing file: FileNotFoundError."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except ValueError as exc:  # JSON or UTF-8 decoding
        raise fail(f"not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise fail("not a JSON object")
    return obj


def load_meta(data_path: str) -> Dict[str, Any]:
    """The dataset's meta.json (written by ``xclass make-data`` or an importer)."""
    p = os.path.join(data_path, "meta.json")
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: dataset not found (run `xclass make-data` or set data.path)")
    return read_json_object(p, lambda why: DataError(f"corrupt meta.json ({why})", file=p))


def split_files(data_path: str, split: str) -> List[str]:
    """``DIR/split.parquet`` or the parts under ``DIR/split/``."""
    single = os.path.join(data_path, f"{split}.parquet")
    if os.path.exists(single):
        return [single]
    parts = sorted(glob.glob(os.path.join(data_path, split, "*.parquet")))
    if not parts:
        raise FileNotFoundError(f"{data_path}: no {split}.parquet or {split}/*.parquet")
    return parts


def _dotted(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


_MISSING = object()


def check_same_inputs(keys: Sequence[str], trained: Dict[str, Any], data: Dict[str, Any], data_path: str) -> None:
    """Refuse to encode the dataset ``data_path`` (meta ``data``) with a model trained on data
    described by ``trained`` when a task's ``input_keys`` differ (or the task does): a DataError
    naming the key and both values. Keys the training data's meta.json lacks are not checked."""
    where = os.path.join(data_path, "meta.json")
    if trained.get("task") != data.get("task"):
        raise DataError(f"task {data.get('task')!r}, but the run was trained on task {trained.get('task')!r}",
                        file=where)
    for key in keys:
        want, got = _dotted(trained.get("inputs", {}), key), _dotted(data.get("inputs", {}), key)
        if want is not _MISSING and got != want:
            shown = "missing" if got is _MISSING else repr(got)
            raise DataError(f"inputs.{key} is {shown}, but the run was trained on data with {want!r}", file=where)
