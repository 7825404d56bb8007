"""Writing the quic schema: flows -> train/test Parquet splits, ``meta.json`` and the open set's
``gallery_query.parquet`` (shared by ``import flows`` and ``import pcap``)."""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.schema import SCHEMA_VERSION
from xclass.data.writer import PartWriter, atomic_dir, fixed_list, with_task_meta, write_json
from xclass.importers.common import ImportError_, RowSplit, split_info

STATS = ("duration_s", "bytes_up", "bytes_down", "packets_up", "packets_down", "mean_size", "std_size", "mean_iat_ms")


def finish_stats(n: int, n_up: int, bytes_up: float, bytes_down: float, size_sq: float, span_ms: float) -> np.ndarray:
    """The 8 statistics (float32) from sums over ALL of a flow's ``n`` packets, for both input layouts:
    ``n_up`` client -> server packets, bytes per direction, the sum of squared sizes, and ``span_ms``
    = last - first packet time = the sum of the IATs of packets 1.. . With integer (Python int) sums
    the variance ``(n * sq - total^2) / n^2`` is exact."""
    tot = bytes_up + bytes_down
    var = max(n * size_sq - tot * tot, 0) / (n * n)
    return np.array([span_ms / 1000.0, bytes_up, bytes_down, n_up, n - n_up, tot / n, math.sqrt(var),
                     span_ms / (n - 1) if n > 1 else 0.0], np.float32)


def flow_stats(sizes: np.ndarray, dirs: np.ndarray, iat: np.ndarray) -> np.ndarray:
    """The 8 statistics (float32) of one flow's recorded packets (all packets, not padded)."""
    s = np.asarray(sizes, np.float64)
    if (s == np.round(s)).all():  # integer sizes: exact integer sums
        s = s.astype(np.int64)
    up = dirs > 0
    return finish_stats(len(s), int(up.sum()), s[up].sum().item(), s[~up].sum().item(), (s * s).sum().item(),
                        float(iat[1:].sum()))


def pack(sizes: np.ndarray, dirs: np.ndarray, iat: np.ndarray, stats: np.ndarray, n: int,
         port: int = 0, proto: int = 0, source: int = -1) -> Dict[str, np.ndarray]:
    """One flow as the writer takes it: its first ``n`` packets, zero-padded, its statistics,
    the server's port and IP protocol (0 = unknown) and its input file (``source``, an index
    into the import's file list; -1 = unknown)."""
    m = min(n, len(sizes))
    pad = lambda a, dt: np.concatenate([np.asarray(a, np.float64)[:m], np.zeros(n - m)]).astype(dt)  # noqa: E731
    return {"sizes": pad(sizes, np.int16), "dirs": pad(dirs, np.int8), "iat": pad(iat, np.float32),
            "num": np.int32(m), "stats": stats, "port": int(port), "proto": int(proto), "source": int(source)}


def write_flows(out: str, read: Callable[[], tuple], source: Dict, n: int, test_classes: int, seed: int,
                overwrite: bool, test_fraction: float = 0.0, held_out: Optional[Sequence[str]] = None,
                max_flows: int = 0) -> Dict:
    """Read the flows inside :func:`atomic_dir`, hold out ``test_classes`` classes (or the names
    ``held_out``), write splits and meta. ``read() -> (counts, flows)``: a flow is ``(name,
    packets)`` or ``(name, packets, to_test)``, where ``to_test`` sends it to the test split;
    ``counts`` holds the flows per name, or per ``(name, to_test)`` for the second kind.
    ``max_flows`` > 0 keeps that many flows of a name (of each side, with ``to_test``) that has
    more: a seeded systematic sample over the input (:class:`RowSplit`), before the split."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        counts, flows = read()
        names = sorted({k if isinstance(k, str) else k[0] for k in counts})
        if test_classes >= len(names):
            raise ImportError_(f"--test-classes {test_classes} leaves no training class ({len(names)} classes)")
        held = set(held_out) if held_out is not None else set(
            np.array(names)[np.random.default_rng(seed).permutation(len(names))[:test_classes]].tolist())
        train_names = [n for n in names if n not in held]
        test_names = sorted(held)
        label_of = {n: i for i, n in enumerate(train_names + test_names)}
        writers = FlowWriters(tmp, n)
        rows = RowSplit(test_fraction, seed)
        cap = RowSplit(1.0, seed, {c: max_flows / k for c, k in counts.items() if max_flows and k > max_flows},
                       salt=104729)
        for name, packets, *to_test in flows:
            if not cap.pick((name, bool(to_test[0])) if to_test else name):
                continue
            test = name in held or any(to_test) or rows.pick(name)
            writers.add("test" if test else "train", label_of[name], packets)
        if max_flows:
            source = {**source, "max_flows": max_flows,
                      "capped_flows": sum(k - max_flows for k in counts.values() if k > max_flows)}
        meta = writers.close(train_names, test_names, source, seed)
        write_json(os.path.join(tmp, "meta.json"), meta)
        return meta


class FlowWriters:
    """Per-split PartWriters of the quic schema, buffered in chunks of 4096 flows."""

    def __init__(self, tmp: str, n: int) -> None:
        self.tmp, self.n = tmp, n
        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("pkt_sizes", pa.list_(pa.int16(), n)),
                            ("pkt_dirs", pa.list_(pa.int8(), n)), ("pkt_iat", pa.list_(pa.float32(), n)),
                            ("num_packets", pa.int32()), ("flow_stats", pa.list_(pa.float32(), len(STATS))),
                            ("server_port", pa.int32()), ("ip_proto", pa.int8()), ("source_file", pa.int32())])
        self.schema = with_task_meta(schema, "quic", num_packets=n, flow_stats=list(STATS))
        self.w: Dict[str, PartWriter] = {}
        self.buf: Dict[str, List] = {}
        self.seen: Dict[str, List] = {}
        self.next_id = 0
        self.ports_known = False

    def add(self, split: str, label: int, p: Dict[str, np.ndarray]) -> None:
        if split not in self.w:
            self.w[split] = PartWriter(os.path.join(self.tmp, f"{split}.parquet"), self.schema, row_group_rows=65536)
            self.buf[split], self.seen[split] = [], []
        self.buf[split].append((self.next_id, label, p))
        self.seen[split].append((self.next_id, label))
        self.next_id += 1
        if len(self.buf[split]) >= 4096:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self.buf[split]
        if not rows:
            return
        st = lambda k: np.stack([r[2][k] for r in rows])  # noqa: E731
        self.w[split].write({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "label": pa.array([r[1] for r in rows], pa.int64()),
                             "pkt_sizes": fixed_list(st("sizes"), pa.int16()), "pkt_dirs": fixed_list(st("dirs"), pa.int8()),
                             "pkt_iat": fixed_list(st("iat"), pa.float32()),
                             "num_packets": pa.array([r[2]["num"] for r in rows], pa.int32()),
                             "flow_stats": fixed_list(st("stats"), pa.float32()),
                             "server_port": pa.array([r[2]["port"] for r in rows], pa.int32()),
                             "ip_proto": pa.array([r[2]["proto"] for r in rows], pa.int8()),
                             "source_file": pa.array([r[2]["source"] for r in rows], pa.int32())})
        self.ports_known |= any(r[2]["port"] > 0 for r in rows)
        self.buf[split] = []

    def close(self, train_names: List[str], test_names: List[str], source: Dict, seed: int) -> Dict:
        if "train" not in self.w:
            raise ImportError_("no flow went to the training split")
        splits = {}
        for split, w in self.w.items():
            self._flush(split)
            w.close()
            splits[split] = split_info(split, *(np.array(x) for x in zip(*self.seen[split])))
        meta = {"task": "quic", "schema_version": SCHEMA_VERSION, "seed": seed, "num_classes": len(train_names),
                "test_classes": len(test_names), "class_names": train_names + test_names, "splits": splits,
                "inputs": {"flow_stats": list(STATS), "packets": {"columns": ["pkt_sizes", "pkt_dirs", "pkt_iat"],
                           "dirs": "+1 client->server, -1 server->client, 0 pad", "iat_unit": "ms",
                           "num_packets": self.n}}, "source": source}
        if self.ports_known:  # the server_port / ip_proto columns carry values (pcap imports)
            meta["inputs"]["ports"] = {"columns": ["server_port", "ip_proto"],
                                       "server_port": "the service port (the server's, or the client's well-known one), 0 unknown",
                                       "ip_proto": "6 tcp, 17 udp, 0 unknown"}
        if "test" in self.w:
            meta["gallery_query"] = self._gallery_query()
        return meta

    def _gallery_query(self) -> Dict:
        """Per test class, the first half of its test rows (file order, at least 1) is gallery."""
        ids, labels = (np.array(x) for x in zip(*self.seen["test"]))
        is_q = np.zeros(len(ids), bool)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            is_q[idx[max(1, len(idx) // 2):]] = True
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "is_query": pa.array(is_q)}),
                       os.path.join(self.tmp, "gallery_query.parquet"))
        return {"file": "gallery_query.parquet", "rows": int(len(ids)), "queries": int(is_q.sum())}
