"""One row per packet ("long" format) -> flows, for the flows importer (``--flow-id-column``).

Columns: the flow id (``--flow-id-column``, one or several comma-separated columns such as a
connection's ``client_ip,client_port,server_ip,server_port,proto``; values compared as text, and
taken as-is, unless ``--bidirectional src_ip=dst_ip,src_port=dst_port`` names the column pairs a
reply swaps: then a packet and its reply map to one flow, as in a raw capture's 5-tuple), the
packet time (``--time-column``, numbers in ``--time-unit`` s/ms/us/ns, or a Parquet timestamp), the
size (``--size-column``, integer bytes in [0, 32767]), the class (``--label-column``) and either
a direction (``--direction-column``) or the source address (``--src-column``: +1 for packets sent
by the source of the flow's first packet, -1 for the others). Directions: +1/-1; 0/1 (0 = client
-> server = +1, 1 = -1; recognised when a 0 appears anywhere in the input, a column of only 1s
reads as +1); or words, case-insensitive: ``up``, ``out``, ``upload``, ``fwd``, ``forward``,
``c2s`` = +1 and ``down``, ``in``, ``download``, ``bwd``, ``backward``, ``s2c`` = -1.

Files are read in record batches. Per flow only the N earliest packets (by time, then file order)
and running sums over all packets (count and bytes per direction, sum of squared sizes, first and
last time) are kept, so memory grows with the number of flows, not packets; a flow's packets may be
in any order and spread over the input files. Flows come out in order of their first row.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xclass.importers.common import ImportError_
from xclass.importers.flow_writer import finish_stats, pack
from xclass.importers.flows import FlowSource, Rows
from xclass.importers.packet_columns import (NUMBERS, ONE, PER_SECOND, UP, WORDS, CellAt, PacketColumns,
                                             canonical_key, first_true, numeric_column)

__all__ = ["PacketColumns", "PacketFlows", "read_packet_flows"]


class PacketFlows:
    """Per-flow state: the ``n`` earliest packets (time, size, side) in ``[F, n]`` arrays, running
    sums over all packets, and {side: [packets, bytes]} per flow. A side is UP/DOWN/ONE, or the id
    of a source address (``--src-column``)."""

    ARRAYS = {"t": (np.float64, 0.0), "size": (np.int16, 0), "side": (np.int32, 0)}  # [F, n]
    SUMS = {"k": (np.int64, 0), "label": (np.int64, -1), "sq": (np.int64, 0), "tmin": (np.float64, np.inf),
            "tmax": (np.float64, -np.inf)}  # [F]: kept count, class id, sum of squared sizes, time range

    def __init__(self, cols: PacketColumns, n: int) -> None:
        self.cols, self.n, self.cap = cols, n, 0
        self.a: Dict[str, np.ndarray] = {}
        self._grow(1024)
        self.index: Dict[tuple, int] = {}  # flow id -> flow
        self.sides: List[Dict[int, List[int]]] = []
        self.labels: Dict[str, int] = {}
        self.src_ids: Dict[str, int] = {}
        self.enc: Dict[float, str] = {}  # numeric direction 0 / -1 -> where first seen (0/1 vs +1/-1)

    def _grow(self, need: int) -> None:
        """Room for ``need`` flows (capacity doubles)."""
        if need <= self.cap:
            return
        cap = max(need, 2 * self.cap)
        for name, (dt, fill) in {**self.ARRAYS, **self.SUMS}.items():
            new = np.full((cap, self.n) if name in self.ARRAYS else cap, fill, dt)
            if self.cap:
                new[:self.cap] = self.a[name]
            self.a[name] = new
        self.cap = cap

    def add_batch(self, batch: pa.RecordBatch, path: str, row0: int) -> None:
        """Fold one record batch of packet rows (``row0``: its first row in ``path``) into the flows."""
        c = self.cols
        t = numeric_column(batch.column(c.time), c.time, path, row0, c.time_unit)
        size = numeric_column(batch.column(c.size), c.size, path, row0)
        bad = (size < 0) | (size > 32767) | (size != np.round(size))
        if bad.any():
            i = first_true(bad)
            raise CellAt(path, row0 + i, c.size).error(f"packet size {size[i]:g} is not an integer in [0, 32767]")
        side = self._encode(batch.column(c.direction or c.src), c.direction or c.src, path, row0,
                            self._src_id if c.src else self._direction)
        label = self._encode(batch.column(c.label), c.label, path, row0, self._label_id)
        f = self._flows(batch, label, path, row0)
        self._fold(f, t, size.astype(np.int64), side)

    @staticmethod
    def _encode(arr: pa.Array, col: str, path: str, row0: int, code: Callable[[object, Callable[[], CellAt]], int]) \
            -> np.ndarray:
        """Per-row integer codes from ``code(value, at)``, called once per distinct value (``at()``:
        the value's first cell)."""
        enc = pc.dictionary_encode(arr, null_encoding="encode")
        idx = enc.indices.to_numpy(zero_copy_only=False)
        codes = [code(v, lambda j=j: CellAt(path, row0 + first_true(idx == j), col))
                 for j, v in enumerate(enc.dictionary.to_pylist())]
        return np.array(codes, np.int64)[idx]

    def _label_id(self, v: object, at: Callable[[], CellAt]) -> int:
        """Class id of a label value (ids in order of first sight; names sorted at the end)."""
        if v is None or str(v) == "":
            raise at().error("empty label")
        return self.labels.setdefault(str(v), len(self.labels))

    def _src_id(self, v: object, at: Callable[[], CellAt]) -> int:
        """Side of a source address: its id."""
        if v is None or str(v) == "":
            raise at().error("empty source address")
        return self.src_ids.setdefault(str(v), len(self.src_ids))

    def _direction(self, v: object, at: Callable[[], CellAt]) -> int:
        """Side of a direction value (UP/DOWN/ONE); a 0 and a -1 in the same input raise."""
        side = WORDS.get(v.strip().lower()) if isinstance(v, str) else None
        if side is None and v is not None:
            try:
                x: Optional[float] = float(v)  # numbers, and numbers as text (CSV)
            except (TypeError, ValueError):
                x = None
            side = NUMBERS.get(x)
            if x in (0.0, -1.0):
                self.enc.setdefault(x, str(at()))
                if len(self.enc) == 2:
                    raise at().error(f"direction {v!r} mixes the 0/1 and +1/-1 encodings "
                                     f"(0 at {self.enc[0.0]}, -1 at {self.enc[-1.0]})")
        if side is None:
            raise at().error(f"unknown direction value {v!r} (use +1/-1, 0/1 or {'/'.join(WORDS)})")
        return side

    def _flows(self, batch: pa.RecordBatch, label: np.ndarray, path: str, row0: int) -> np.ndarray:
        """Per-row flow index; new flows (in order of their first row) take that row's label; a row
        whose label differs from its flow's raises."""
        code, parts, values = np.zeros(batch.num_rows, np.int64), [], []
        for col in self.cols.flow_id:
            enc = pc.dictionary_encode(batch.column(col), null_encoding="encode")
            parts.append(enc.indices.to_numpy(zero_copy_only=False))
            values.append(["" if v is None else str(v) for v in enc.dictionary.to_pylist()])
            code = np.unique(code * len(values[-1]) + parts[-1], return_inverse=True)[1].reshape(-1)
        _, first = np.unique(code, return_index=True)
        flow_of = np.empty(len(first), np.int64)
        for g in np.argsort(first):
            r = int(first[g])
            key = canonical_key(tuple(vals[p[r]] for vals, p in zip(values, parts)), self.cols.swap)
            if key not in self.index:
                if not any(key):
                    raise CellAt(path, row0 + r, ",".join(self.cols.flow_id)).error("empty flow id")
                self._grow(len(self.index) + 1)
                self.a["label"][len(self.index)] = label[r]
                self.index[key] = len(self.index)
                self.sides.append({})
            flow_of[g] = self.index[key]
        f = flow_of[code]
        bad = self.a["label"][f] != label
        if bad.any():
            i = first_true(bad)
            names = {v: k for k, v in self.labels.items()}
            flow = ", ".join(f"{c}={v}" for c, v in zip(self.cols.flow_id, next(k for k, j in self.index.items()
                                                                                   if j == f[i])))
            raise CellAt(path, row0 + i, self.cols.label).error(
                f"flow {flow} has packets labelled {names[self.a['label'][f[i]]]!r} and {names[label[i]]!r}")
        return f

    def _fold(self, f: np.ndarray, t: np.ndarray, size: np.ndarray, side: np.ndarray) -> None:
        """Running sums over all packets, then merge the batch into each flow's ``n`` earliest."""
        a = self.a
        np.minimum.at(a["tmin"], f, t)
        np.maximum.at(a["tmax"], f, t)
        np.add.at(a["sq"], f, size * size)
        m = int(side.max()) + 1
        pair, inv = np.unique(f * m + side, return_inverse=True)
        count, nbytes = np.zeros(len(pair), np.int64), np.zeros(len(pair), np.int64)
        np.add.at(count, inv.reshape(-1), 1)
        np.add.at(nbytes, inv.reshape(-1), size)
        for p, c, b in zip(pair.tolist(), count.tolist(), nbytes.tolist()):
            s = self.sides[p // m].setdefault(p % m, [0, 0])
            s[0] += c
            s[1] += b
        flows = np.unique(f)
        k = a["k"][flows]
        kept = np.arange(self.n)[None, :] < k[:, None]  # the stored packets, before the batch's (file order)
        ff = np.concatenate([np.repeat(flows, k), f])
        tt, ss, dd = (np.concatenate([a[name][flows][kept], x]) for name, x in (("t", t), ("size", size),
                                                                                  ("side", side)))
        order = np.lexsort((np.arange(len(ff)), tt, ff))  # by flow, time, then file order
        fs = ff[order]
        seg = np.concatenate([[0], np.cumsum(fs[1:] != fs[:-1])])  # index into `flows`
        rank = np.arange(len(fs)) - np.searchsorted(fs, fs)
        top = rank < self.n
        rows, slot, src = fs[top], rank[top], order[top]
        a["t"][rows, slot], a["size"][rows, slot], a["side"][rows, slot] = tt[src], ss[src], dd[src]
        a["k"][flows] = np.bincount(seg[top], minlength=len(flows))

    def rows(self, factor: float) -> Iterator[Tuple[str, Dict[str, np.ndarray]]]:
        """``(class name, packets)`` per flow in order of first row; ``factor``: time unit -> ms."""
        names = {v: k for k, v in self.labels.items()}
        a = self.a
        for fi in range(len(self.index)):
            k = int(a["k"][fi])
            t, side = a["t"][fi, :k], a["side"][fi, :k]
            up = {int(side[0])} if self.cols.src else ({UP} if 0.0 in self.enc else {UP, ONE})
            n_up = sum(c for s, (c, _) in self.sides[fi].items() if s in up)
            n = sum(c for c, _ in self.sides[fi].values())
            b_up = sum(b for s, (_, b) in self.sides[fi].items() if s in up)
            b_down = sum(b for s, (_, b) in self.sides[fi].items() if s not in up)
            stats = finish_stats(n, n_up, b_up, b_down, int(a["sq"][fi]), float(a["tmax"][fi] - a["tmin"][fi]) * factor)
            iat = np.concatenate([[0.0], np.diff(t) * factor])
            yield names[int(a["label"][fi])], pack(a["size"][fi, :k], np.where(np.isin(side, list(up)), 1, -1),
                                                   iat, stats, self.n)


def read_packet_flows(paths: Sequence[str], cols: PacketColumns, n: int, show_progress: bool = True) -> Rows:
    """Group the packet rows of ``paths`` into flows: (flows per class name, ``(class, packets)`` per flow).
    An input file without rows raises."""
    from tqdm import tqdm

    flows = PacketFlows(cols, n)
    with tqdm(desc="import flows", unit="packets", disable=not show_progress) as bar:
        for path in paths:
            rows = 0
            for batch, _, row0 in FlowSource([path], cols.names(), as_strings=True).batches():
                if batch.num_rows:
                    flows.add_batch(batch, path, row0)
                rows += batch.num_rows
                bar.update(batch.num_rows)
            if rows == 0:
                raise ImportError_(f"{path}: no packet rows (empty file)", file=path)
    per = np.bincount(flows.a["label"][:len(flows.index)], minlength=len(flows.labels))
    return {name: int(per[i]) for name, i in flows.labels.items()}, flows.rows(1000.0 / PER_SECOND[cols.time_unit])
