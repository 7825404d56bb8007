"""Parquet schemas of the four tasks, the ``DataError`` exception and column specs.

A file for task T has the columns of ``TASK_COLUMNS[T]``: ``required`` ones always, and at
least one complete *input group* of ``INPUT_GROUPS[T]`` (e.g. face: ``image`` or the
generic ``features``). Shapes that are not in the Arrow type live in the file's key-value
metadata under the key ``xclass`` (a JSON object: task, schema_version, height, width,
channels, n_mels, num_packets, vocab_size ...). ``validate.validate_file`` checks a file
against these specs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import pyarrow as pa

SCHEMA_VERSION = 1
META_KEY = b"xclass"
TASKS = ("face", "speaker", "quic", "xmc")


class DataError(ValueError):
    """Bad input data. ``file``, ``row`` (global 0-based row index) and ``column`` say where."""

    def __init__(self, reason: str, *, file: Optional[str] = None, row: Optional[int] = None,
                 column: Optional[str] = None) -> None:
        self.reason, self.file, self.row, self.column = reason, file, row, column
        where = [str(file) if file is not None else "<data>"]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{': '.join(where)}: {reason}")


@dataclass(frozen=True)
class Col:
    """One column spec.

    kind: ``int`` (integer scalar), ``bool``, ``string``, ``fixed`` (fixed_size_list),
    ``list`` (list / large_list), ``image`` (fixed_size_list<uint8> or binary PNG/JPEG).
    value: element family of list kinds: ``int``, ``float`` or ``uint8``.
    finite: float values must not be NaN/Inf.
    """

    name: str
    kind: str
    value: str = ""
    required: bool = True
    finite: bool = False


_ID = Col("id", "int")
_LABEL = Col("label", "int")
_FEATURES = Col("features", "fixed", "float", required=False, finite=True)

TASK_COLUMNS: Dict[str, Tuple[Col, ...]] = {
    "face": (_ID, _LABEL, Col("image", "image", "uint8", required=False), _FEATURES),
    "speaker": (_ID, _LABEL, Col("fbank", "list", "float", required=False, finite=True),
                Col("num_frames", "int", required=False), _FEATURES),
    "quic": (_ID, _LABEL, Col("pkt_sizes", "fixed", "int", required=False),
             Col("pkt_dirs", "fixed", "int", required=False),
             Col("pkt_iat", "fixed", "float", required=False, finite=True),
             Col("num_packets", "int", required=False),
             Col("flow_stats", "fixed", "float", required=False, finite=True), _FEATURES),
    "xmc": (_ID, Col("labels", "list", "int"), Col("tokens", "list", "int", required=False),
            Col("text", "string", required=False), _FEATURES),
    # The XMC label table (labels.parquet): one row per label id.
    "xmc_labels": (Col("label_id", "int"), Col("text", "string", required=False),
                   Col("tokens", "list", "int", required=False), _FEATURES),
}

# A file must hold every column of at least one group (its model input).
INPUT_GROUPS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "face": (("image",), ("features",)),
    "speaker": (("fbank", "num_frames"), ("features",)),
    "quic": (("pkt_sizes", "pkt_dirs", "pkt_iat", "num_packets"), ("features",)),
    "xmc": (("tokens",), ("text",), ("features",)),
    "xmc_labels": (("text",), ("tokens",), ("features",)),
}

# Which column holds the class id(s) that must lie in [0, num_classes).
LABEL_COLUMN = {"face": "label", "speaker": "label", "quic": "label", "xmc": "labels",
                "xmc_labels": "label_id"}

QUIC_FLOW_STATS = ("duration_s", "bytes_up", "bytes_down", "packets_up", "packets_down",
                   "mean_size", "std_size", "mean_iat_ms")


def _value_ok(value: str, t: pa.DataType) -> bool:
    if value == "int":
        return pa.types.is_integer(t)
    if value == "float":
        return pa.types.is_floating(t)
    if value == "uint8":
        return t == pa.uint8()
    return False


def type_ok(col: Col, t: pa.DataType) -> bool:
    """Does Arrow type ``t`` satisfy the spec ``col``?"""
    if col.kind == "int":
        return pa.types.is_integer(t)
    if col.kind == "bool":
        return pa.types.is_boolean(t)
    if col.kind == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if col.kind == "fixed":
        return pa.types.is_fixed_size_list(t) and _value_ok(col.value, t.value_type)
    if col.kind == "list":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _value_ok(col.value, t.value_type)
    if col.kind == "image":
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return True
        return pa.types.is_fixed_size_list(t) and t.value_type == pa.uint8()
    raise ValueError(f"unknown column kind {col.kind!r}")


def describe(col: Col) -> str:
    """Human-readable expected type, for error messages."""
    return {"int": "an integer type", "bool": "bool", "string": "string",
            "fixed": f"fixed_size_list<{col.value}>", "list": f"list<{col.value}>",
            "image": "fixed_size_list<uint8> or binary (PNG/JPEG bytes)"}[col.kind]


def read_task_meta(schema: pa.Schema) -> Dict:
    """The ``xclass`` JSON metadata of an Arrow/Parquet schema ({} when absent)."""
    md = schema.metadata or {}
    raw = md.get(META_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise DataError(f"metadata key 'xclass' is not valid JSON: {exc}") from None
