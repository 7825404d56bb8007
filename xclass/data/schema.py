"""Parquet schemas of the tasks (read from the task records), the ``DataError`` exception.

A file for task T has the columns of ``TASK_COLUMNS[T]``: ``required`` ones always, and at
least one complete *input group* of ``INPUT_GROUPS[T]`` (e.g. face: ``image`` or the
generic ``features``). Shapes that are not in the Arrow type live in the file's key-value
metadata under the key ``xclass`` (a JSON object: task, schema_version, height, width,
channels, n_mels, num_packets, vocab_size ...). ``validate.validate_file`` checks a file
against these specs.
"""
from __future__ import annotations

import json
from typing import Dict, Mapping, Optional, Tuple

import pyarrow as pa

from xclass.tasks.base import FEATURES, ID, LABEL, Col, NamesView, TableView  # noqa: F401  (re-exported)

SCHEMA_VERSION = 1
META_KEY = b"xclass"


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
        if file is None and row is None and column is None:  # nothing to name: an option out of range, say
            super().__init__(reason)
        else:
            super().__init__(f"{': '.join(where)}: {reason}")


# The per-task tables below are live views of the task records (xclass/tasks/): a task
# registered later is seen by the validator and the CLI at once.
#: Registered task names (face, speaker, quic, xmc, ...).
TASKS = NamesView()
#: Columns of each table kind: every task's split table and side tables such as ``xmc_labels``.
TASK_COLUMNS: Mapping[str, Tuple[Col, ...]] = TableView(lambda t: t.columns)
#: A file must hold every column of at least one group (its model input).
INPUT_GROUPS: Mapping[str, Tuple[Tuple[str, ...], ...]] = TableView(lambda t: t.input_groups)
#: Which column holds the class id(s) that must lie in [0, num_classes).
LABEL_COLUMN: Mapping[str, str] = TableView(lambda t: t.label_column)

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
