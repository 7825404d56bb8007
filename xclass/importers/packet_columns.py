"""Per-packet input columns of the flows importer: the CLI options (``PacketColumns``), flow-key
canonicalisation for ``--bidirectional``, and cell-level parsing with errors that name the file,
row and column. Used by :mod:`xclass.importers.flow_packets`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xclass.importers.common import ImportError_

PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
UP, DOWN, ONE = 0, 1, 2  # direction sides; ONE = a numeric 1: -1 if the input has a 0 (0/1 encoding), else +1
WORDS = {**dict.fromkeys(("up", "out", "upload", "fwd", "forward", "c2s"), UP),
         **dict.fromkeys(("down", "in", "download", "bwd", "backward", "s2c"), DOWN)}
NUMBERS = {1.0: ONE, 0.0: UP, -1.0: DOWN}


@dataclass(frozen=True)
class PacketColumns:
    """The per-packet columns; exactly one of ``direction`` / ``src``."""

    flow_id: Tuple[str, ...]
    time: str
    size: str
    label: str
    direction: Optional[str]
    src: Optional[str]
    time_unit: str = "s"
    swap: Tuple[Tuple[int, int], ...] = ()  # --bidirectional: positions in flow_id swapped in reverse packets

    @classmethod
    def parse(cls, flow_id: str, time: Optional[str], size: Optional[str], label: str, direction: Optional[str],
              src: Optional[str], time_unit: str = "s", per_flow_options: bool = False,
              bidirectional: Optional[str] = None) -> "PacketColumns":
        """From the CLI options (``flow_id`` comma-separated; ``bidirectional`` ``A=B,...`` pairs of
        flow id columns); missing or conflicting options (or ``per_flow_options``: one-row-per-flow
        options given too) raise."""
        if per_flow_options:
            raise ImportError_("--flow-id-column (one row per packet) does not combine with --ppi-column, "
                               "--sizes-column, --dirs-column, --iat-column or --stats-map (one row per flow)")
        ids = tuple(c.strip() for c in flow_id.split(",") if c.strip())
        if not ids or not time or not size:
            raise ImportError_("one row per packet needs --flow-id-column, --time-column and --size-column")
        if bool(direction) == bool(src):
            raise ImportError_("one row per packet needs one of --direction-column or --src-column")
        if time_unit not in PER_SECOND:
            raise ImportError_(f"--time-unit {time_unit!r}: use one of {', '.join(PER_SECOND)}")
        return cls(ids, time, size, label, direction, src, time_unit, _swap_pairs(bidirectional, ids))

    def names(self) -> List[str]:
        """The columns to read."""
        return [*self.flow_id, self.time, self.size, self.label, self.direction or self.src]


def _swap_pairs(text: Optional[str], ids: Tuple[str, ...]) -> Tuple[Tuple[int, int], ...]:
    """``src_ip=dst_ip,src_port=dst_port`` -> positions in ``ids`` of the columns a reverse packet swaps."""
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        a, _, b = (x.strip() for x in item.partition("="))
        if a not in ids or b not in ids or a == b:
            raise ImportError_(f"--bidirectional {item.strip()!r}: expected COLUMN=COLUMN, two different columns "
                               f"of --flow-id-column ({','.join(ids)})")
        pairs.append((ids.index(a), ids.index(b)))
    return tuple(pairs)


def canonical_key(key: tuple, swap: Tuple[Tuple[int, int], ...]) -> tuple:
    """The smaller of a flow key and its reverse (``swap`` exchanged), so both directions of a
    connection give one key."""
    if not swap:
        return key
    rev = list(key)
    for i, j in swap:
        rev[i], rev[j] = key[j], key[i]
    return min(key, tuple(rev))


def first_true(mask: np.ndarray) -> int:
    """Index of the first True."""
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True)
class CellAt:
    """A cell of the input, for error messages."""

    path: str
    row: int
    col: str

    def error(self, text: str) -> ImportError_:
        return ImportError_(f"{self}: {text}", file=self.path, row=self.row)

    def __str__(self) -> str:
        return f"{self.path}: row {self.row}, column {self.col}"


def numeric_column(arr: pa.Array, col: str, path: str, row0: int, unit: Optional[str] = None) -> np.ndarray:
    """A column as float64 (with ``unit``: a timestamp/duration too, in ``unit``); a null,
    non-numeric or non-finite value raises naming the file, row and column."""
    at = lambda i: CellAt(path, row0 + i, col)  # noqa: E731
    scale = 1.0
    if unit and (pa.types.is_timestamp(arr.type) or pa.types.is_duration(arr.type)):
        scale = PER_SECOND[unit] / PER_SECOND[arr.type.unit]
        arr = pc.cast(arr, pa.int64())
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            arr = pc.cast(arr, pa.float64())
        except pa.ArrowInvalid:
            vals = arr.to_pylist()
            i = next(i for i, v in enumerate(vals) if v is not None and not _is_number(v))
            raise at(i).error(f"not a number: {vals[i]!r}") from None
    elif not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type)):
        raise at(0).error(f"not numeric (type {arr.type})")
    if arr.null_count:
        raise at(first_true(arr.is_null().to_numpy(zero_copy_only=False))).error("empty value")
    v = arr.to_numpy(zero_copy_only=False).astype(np.float64) * scale
    if not np.isfinite(v).all():
        i = first_true(~np.isfinite(v))
        raise at(i).error(f"{v[i]} is not a finite number")
    return v


def _is_number(v: str) -> bool:
    """Whether Arrow parses the text as a float64 (the cast the batch failed)."""
    try:
        pc.cast(pa.array([v], pa.string()), pa.float64())
        return True
    except pa.ArrowInvalid:
        return False
