"""One-row-per-flow input (``import flows``) -> the rows the writer takes, a record batch at a time.

:func:`convert_batch` converts the whole batch at once (:func:`convert`: every row's packet lists in
flat arrays, the checks and the 8 statistics over the batch) and gives the rows :func:`row_packets`
gives one at a time: the same values (sums of fractional sizes or IATs may differ in the last bit,
as the order of the additions differs). A batch in which any row fails a check, or that holds a
flow too long for exact int64 sums, raises :class:`Refused` there and is converted row by row,
which names the row in its error."""
from __future__ import annotations

import json
from itertools import chain
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from xclass.importers.common import ImportError_, ip_proto
from xclass.importers.flow_writer import STATS, flow_stats, pack

#: longest flow converted here: n * sum(size^2) stays below 2^53 (exact as a float64) up to this
MAX_PACKETS = 2048


class Refused(Exception):
    """A row of the batch is left to the per-row conversion (which raises its error)."""


def _lists(values: Sequence[Any]) -> List[Any]:
    """Each value a list: JSON text parsed, lists and tuples kept; anything else refused. The batch
    twin of :func:`_as_list`, which names the row but copies every list (8 % slower here)."""
    out = []
    for v in values:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise Refused from None
        if not isinstance(v, (list, tuple)):
            raise Refused
        out.append(v)
    return out


def packet_lists(cols: Dict[str, List[Any]], ppi_column: Optional[str], pkt_cols: Sequence[str]):
    """(sizes, dirs, iat): per row a list each, from a CESNET ``PPI`` column ([[iat], [dir], [size]])
    or three list columns."""
    if not ppi_column:
        return tuple(_lists(cols[c]) for c in pkt_cols)
    ppi = _lists(cols[ppi_column])
    if any(len(p) != 3 for p in ppi):
        raise Refused
    iat, dirs, sizes = (_lists([p[k] for p in ppi]) for k in range(3))
    return sizes, dirs, iat


def _flat(lists: List[Any], lens: np.ndarray) -> np.ndarray:
    """The lists concatenated as float64 (numbers or numeric text; anything else refused)."""
    if not np.array_equal(np.fromiter(map(len, lists), np.int64, len(lists)), lens):
        raise Refused
    try:
        x = np.asarray(list(chain.from_iterable(lists)), np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise Refused from None
    if len(x) != lens.sum():  # nested lists
        raise Refused
    return x


def flow_arrays(sizes: List, dirs: List, iat: List) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lens [B], flat sizes, flat dirs, flat IATs [sum(lens)], the first IAT of each flow set to 0),
    after the checks of the per-row path."""
    lens = np.fromiter(map(len, sizes), np.int64, len(sizes))
    if not len(lens) or lens.min() == 0 or lens.max() > MAX_PACKETS:
        raise Refused
    s, d, t = _flat(sizes, lens), _flat(dirs, lens), _flat(iat, lens)
    ok = (np.abs(d) == 1).all() and np.isfinite(s).all() and (s >= 0).all() and (s <= 32767).all()
    if not (ok and np.isfinite(t).all() and (t >= 0).all()):
        raise Refused
    t[np.cumsum(lens) - lens] = 0.0
    return lens, s, d, t


def batch_stats(lens: np.ndarray, s: np.ndarray, d: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The 8 statistics [B, 8] float32 of each flow (all its packets), as
    :func:`~xclass.importers.flow_writer.flow_stats` computes them: integer sizes summed exactly."""
    starts = np.cumsum(lens) - lens
    up = d > 0
    whole = np.logical_and.reduceat(s == np.round(s), starts)
    si = s.astype(np.int64)
    sums = lambda x: np.add.reduceat(x, starts)  # noqa: E731
    n_up = sums(up.astype(np.int64))
    b_up = np.where(whole, sums(np.where(up, si, 0)), sums(np.where(up, s, 0.0)))
    b_dn = np.where(whole, sums(np.where(up, 0, si)), sums(np.where(up, 0.0, s)))
    sq_i, sq_f = sums(si * si), sums(s * s)
    tot_i = sums(si)
    var = np.where(whole, np.maximum(lens * sq_i - tot_i * tot_i, 0) / (lens * lens),
                   np.maximum(lens * sq_f - (b_up + b_dn) ** 2, 0) / (lens * lens))
    span = sums(t)
    mean_iat = np.divide(span, lens - 1, out=np.zeros(len(lens)), where=lens > 1)
    out = np.stack([span / 1000.0, b_up, b_dn, n_up, lens - n_up, (b_up + b_dn) / lens, np.sqrt(var), mean_iat], 1)
    return out.astype(np.float32)


def padded(lens: np.ndarray, flat: np.ndarray, n: int, dtype) -> np.ndarray:
    """[B, n] of each flow's first n values, zero-padded, cast to ``dtype`` as the per-row path does."""
    pos = np.arange(n)[None, :]
    idx = np.minimum((np.cumsum(lens) - lens)[:, None] + pos, len(flat) - 1)
    return np.where(pos < lens[:, None], flat[idx], 0.0).astype(dtype)


def numbers(values: Sequence[Any]) -> np.ndarray:
    """float64 of the values (numbers or numeric text); None, other text or non-finite refused."""
    try:
        x = np.asarray(values, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise Refused from None
    if len(x) != len(values) or not np.isfinite(x).all():
        raise Refused
    return x


def ports(cols: Dict[str, List[Any]], port_cols: Tuple[Optional[str], Optional[str]], b: int) -> Tuple[List, List]:
    """(service ports, IP protocols) of the rows, 0 where no column was given."""
    port, proto = [0] * b, [0] * b
    if port_cols[0]:
        x = numbers(cols[port_cols[0]])
        if not ((x == np.round(x)) & (x >= 0) & (x <= 65535)).all():
            raise Refused
        port = x.astype(np.int64).tolist()
    if port_cols[1]:
        known: Dict[Any, int] = {}
        try:
            for i, v in enumerate(cols[port_cols[1]]):
                v = int(v) if isinstance(v, float) and v.is_integer() else v
                key = (type(v), v)
                if key not in known:
                    known[key] = ip_proto(v, "")
                proto[i] = known[key]
        except (ImportError_, TypeError):
            raise Refused from None
    return port, proto


class Block:
    """The converted rows of one batch in a few arrays (cheap to send from a worker process);
    iterating gives ``(class, packets)`` per row, ``packets`` as :func:`~xclass.importers.flow_writer.pack`
    makes it (its arrays are rows of the block's)."""

    def __init__(self, labels: List[str], arrays: Dict[str, np.ndarray], port: List[int], proto: List[int],
                 source: int) -> None:
        self.labels, self.arrays, self.port, self.proto, self.source = labels, arrays, port, proto, source

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        a = self.arrays
        for i, lab in enumerate(self.labels):
            yield lab, {"sizes": a["sizes"][i], "dirs": a["dirs"][i], "iat": a["iat"][i], "num": a["num"][i],
                        "stats": a["stats"][i], "port": self.port[i], "proto": self.proto[i], "source": self.source}


def convert(cols: Dict[str, List[Any]], label_column: str, ppi_column: Optional[str], pkt_cols: Sequence[str],
            n: int, smap: Dict[str, str], port_cols: Tuple[Optional[str], Optional[str]], source: int) -> Block:
    """The rows of a batch given as columns of Python values (``cols``); :class:`Refused` when a
    row needs the per-row path."""
    lens, s, d, t = flow_arrays(*packet_lists(cols, ppi_column, pkt_cols))
    stats = batch_stats(lens, s, d, t)
    for k, c in smap.items():
        stats[:, STATS.index(k)] = numbers(cols[c])
    port, proto = ports(cols, port_cols, len(lens))
    arrays = {"sizes": padded(lens, s, n, np.int16), "dirs": padded(lens, d, n, np.int8),
              "iat": padded(lens, t, n, np.float32), "num": np.minimum(lens, n).astype(np.int32), "stats": stats}
    return Block([str(v) for v in cols[label_column]], arrays, port, proto, source)


def convert_batch(job: Tuple[pa.RecordBatch, str, int], *, label_column: str, ppi_column: Optional[str],
                  pkt_cols: List[str], n: int, smap: Dict[str, str], port_cols: Tuple[Optional[str], Optional[str]],
                  index: Dict[str, int]) -> Iterable[Tuple[str, Dict[str, Any]]]:
    """``(class, packets)`` of every row of one record batch (``job``: batch, file, first row)."""
    batch, path, row = job
    try:  # the whole batch at once; a batch with a bad row goes row by row, which names the row
        return convert(batch.to_pydict(), label_column, ppi_column, pkt_cols, n, smap, port_cols, index[path])
    except Refused:
        pass
    return [(str(rec[label_column]), row_packets(rec, path, row + i, ppi_column, pkt_cols, n, smap, port_cols,
                                              index[path]))
            for i, rec in enumerate(batch.to_pylist())]


def _port(rec: Dict[str, Any], cols: Tuple[Optional[str], Optional[str]], path: str, row: int) -> Tuple[int, int]:
    """(service port, IP protocol) of a flow row; 0 where no column was given."""
    port = proto = 0
    if cols[0]:
        v = rec.get(cols[0])
        try:
            port = int(float(v))
            ok = float(v) == port and 0 <= port <= 65535
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ImportError_(f"{path}: row {row}, column {cols[0]}: a port must be an integer in [0, 65535], "
                               f"got {v!r}", file=path, row=row)
    if cols[1]:
        v = rec.get(cols[1])
        v = int(v) if isinstance(v, float) and v.is_integer() else v  # a numeric Parquet/CSV column
        proto = ip_proto(v, f"{path}: row {row}, column {cols[1]}", file=path, row=row)
    return port, proto


def row_packets(rec: Dict[str, Any], path: str, row: int, ppi_column: Optional[str], cols: List[str],
                n: int, smap: Dict[str, str],
                port_cols: Tuple[Optional[str], Optional[str]] = (None, None), source: int = -1) -> Dict[str, np.ndarray]:
    where = f"{path}: row {row}"
    if ppi_column:
        ppi = _as_list(rec[ppi_column], f"{where}, column {ppi_column}")
        if len(ppi) != 3:
            raise ImportError_(f"{where}, column {ppi_column}: expected [[iat], [dir], [size]], got {len(ppi)} lists",
                               file=path, row=row)
        iat, dirs, sizes = (np.asarray(_as_list(v, f"{where}, column {ppi_column}"), np.float64) for v in ppi)
    else:
        sizes, dirs, iat = (np.asarray(_as_list(rec[c], f"{where}, column {c}"), np.float64) for c in cols)
    if not (len(sizes) == len(dirs) == len(iat)) or len(sizes) == 0:
        raise ImportError_(f"{where}: packet lists must be non-empty and equally long "
                           f"(sizes {len(sizes)}, dirs {len(dirs)}, iat {len(iat)})", file=path, row=row)
    if not np.isin(dirs, (-1, 1)).all():
        raise ImportError_(f"{where}: directions must be +1 / -1, got {sorted(set(dirs.tolist()))}", file=path, row=row)
    if not (np.isfinite(sizes).all() and np.isfinite(iat).all()) or (sizes < 0).any() or (sizes > 32767).any() \
            or (iat < 0).any():
        raise ImportError_(f"{where}: packet sizes must be in [0, 32767] and IATs finite and >= 0", file=path, row=row)
    iat = iat.copy()
    iat[0] = 0.0
    stats = flow_stats(sizes, dirs, iat)
    for k, c in smap.items():
        v = rec.get(c)
        if v is None or not np.isfinite(float(v)):
            raise ImportError_(f"{where}, column {c}: missing or non-finite flow statistic", file=path, row=row)
        stats[STATS.index(k)] = float(v)
    port, proto = _port(rec, port_cols, path, row)
    return pack(sizes, dirs, iat, stats, n, port=port, proto=proto, source=source)


def _as_list(v: Any, where: str) -> List[Any]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as exc:
            raise ImportError_(f"{where}: not a JSON list ({exc})") from None
    if not isinstance(v, (list, tuple, np.ndarray)):
        raise ImportError_(f"{where}: expected a list, got {type(v).__name__}")
    return list(v)
