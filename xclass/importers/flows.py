"""Flow records -> the quic Parquet schema (first N packets + 8 flow statistics).

Two input layouts in CSV, JSON lines or Parquet (``.csv``, ``.csv.gz``, ``.jsonl``, ``.jsonl.gz``,
``.ndjson``, ``.parquet``; JSON lists are lists, as in Parquet); the class comes from
``--label-column`` (default ``label``; strings or integers: class names, sorted to ids ``0..C-1``).

ONE ROW PER FLOW, as CESNET-QUIC22 publishes it:

- per-packet information either as one ``PPI`` column (``--ppi-column``) holding
  ``[[iat_ms...], [dir...], [size...]]`` (CESNET order; a JSON string in CSV, a nested list in
  Parquet), or as three list columns ``--sizes-column``, ``--dirs-column``, ``--iat-column``;
  directions are +1 (client -> server) / -1 (server -> client), inter-arrival times in ms (the
  first packet's is stored as 0);
- optional whole-flow statistics mapped with ``--stats-map duration_s=DURATION,bytes_up=BYTES,
  bytes_down=BYTES_REV,packets_up=PACKETS,packets_down=PACKETS_REV`` (CESNET names). A statistic
  that is not mapped is computed from the recorded packets: duration = sum of IATs / 1000,
  bytes / packets per direction, mean and std of sizes, mean IAT of packets 1.. (ms).

ONE ROW PER PACKET (``--flow-id-column`` given; see :mod:`xclass.importers.flow_packets`): packets
grouped by flow id, ordered by ``--time-column``, with ``--size-column`` and a direction from
``--direction-column`` or ``--src-column``. The statistics are the same computation over ALL the
flow's packets (:func:`~xclass.importers.flow_writer.finish_stats`), while only the first N are stored.

The first ``num_packets`` (30) packets are kept, the rest of the row is zero-padded.
"""
from __future__ import annotations

import os
from collections import Counter
from functools import partial
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from xclass.importers.common import ImportError_
from xclass.importers.inputs import decode_in_order, expand_inputs, first_positions
from xclass.importers.flow_rows import convert_batch
from xclass.importers.flow_writer import STATS, write_flows

Rows = Tuple[Dict[str, int], Iterator[Tuple[str, Dict[str, np.ndarray]]]]  # (flows per class, (class, packets) per flow)


def parse_stats_map(text: Optional[str]) -> Dict[str, str]:
    """``name=COLUMN,...`` -> {stat name: column}; names must be flow statistics."""
    out: Dict[str, str] = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise ImportError_(f"--stats-map entry {part!r} must look like stat=COLUMN")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in STATS:
            raise ImportError_(f"--stats-map: unknown statistic {k!r} (known: {', '.join(STATS)})")
        out[k] = v
    return out


JSON_LINES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
#: file names read from a folder given as --input
FLOW_SUFFIXES = (".csv", ".csv.gz", ".parquet") + JSON_LINES


class FlowSource:
    """Streams CSV / JSON-lines / Parquet files in record batches (``as_strings``: CSV and JSON
    columns read as text)."""

    def __init__(self, paths: Sequence[str], columns: Sequence[str], as_strings: bool = False) -> None:
        self.paths, self.columns, self.as_strings = list(paths), sorted(set(columns)), as_strings

    def _missing(self, path: str, names: List[str]) -> ImportError_:
        """The error naming the requested columns that ``path`` (with columns ``names``) lacks."""
        missing = [c for c in self.columns if c not in names]
        return ImportError_(f"{path}: missing column(s) {missing} (has {names})", file=path)

    def _batches(self, path: str) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self._read(path):
                batch.validate(full=True)          # e.g. string bytes that are not UTF-8 (JSON, Parquet)
                binary = [f.name for f in batch.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
                if binary:                         # a CSV column with bytes that are not UTF-8 reads as binary
                    raise ImportError_(f"{path}: column {binary[0]}: not UTF-8 text", file=path)
                yield batch
        except ImportError_:
            raise
        except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowNotImplementedError, OSError) as exc:
            raise ImportError_(f"{path}: cannot read flows ({exc})", file=path) from None
        except UnicodeDecodeError:  # pyarrow's own message quoted bytes that are not UTF-8
            raise ImportError_(f"{path}: cannot read flows (bytes that are not UTF-8 text)", file=path) from None

    def _read(self, path: str) -> Iterator[pa.RecordBatch]:
        name = path.lower()  # as expand_inputs matches the names of a folder's files
        if name.endswith(".parquet"):
            pf = pq.ParquetFile(path)
            if any(c not in pf.schema_arrow.names for c in self.columns):
                raise self._missing(path, pf.schema_arrow.names)
            yield from pf.iter_batches(batch_size=8192, columns=self.columns)
        elif name.endswith(JSON_LINES):
            yield from self._json_batches(path)
        else:
            types = {c: pa.string() for c in self.columns} if self.as_strings else None
            conv = pacsv.ConvertOptions(include_columns=self.columns, column_types=types)
            try:
                reader = pacsv.open_csv(path, convert_options=conv)
            except pa.ArrowKeyError:  # a column named in include_columns is not in the header
                raise self._missing(path, pacsv.open_csv(path).schema.names) from None
            yield from reader

    def _json_batches(self, path: str) -> Iterator[pa.RecordBatch]:
        """One JSON object per line; the column types are inferred from the first block (a key
        that changes type further on stops the import with the file named)."""
        reader = pajson.open_json(path)
        if any(c not in reader.schema.names for c in self.columns):
            raise self._missing(path, reader.schema.names)
        for batch in reader:
            batch = batch.select(self.columns)
            if self.as_strings:
                batch = pa.RecordBatch.from_arrays([batch.column(c).cast(pa.string()) for c in self.columns],
                                                   names=self.columns)
            yield batch

    def batches(self) -> Iterator[Tuple[pa.RecordBatch, str, int]]:
        """``(batch, file, index in the file of the batch's first row)``."""
        for path in self.paths:
            row = 0
            for batch in self._batches(path):
                yield batch, path, row
                row += batch.num_rows

    def __iter__(self) -> Iterator[tuple]:
        """``(row dict, file, row)``."""
        for batch, path, row in self.batches():
            for i, rec in enumerate(batch.to_pylist()):
                yield rec, path, row + i


def import_flows(inputs: Sequence[str], out: str, *, label_column: str = "label", ppi_column: Optional[str] = None,
                 sizes_column: Optional[str] = None, dirs_column: Optional[str] = None,
                 iat_column: Optional[str] = None, stats_map: Optional[str] = None,
                 flow_id_column: Optional[str] = None, time_column: Optional[str] = None, time_unit: str = "s",
                 size_column: Optional[str] = None, direction_column: Optional[str] = None,
                 src_column: Optional[str] = None, bidirectional: Optional[str] = None, num_packets: int = 30,
                 test_classes: int = 0, seed: int = 0, test_fraction: float = 0.0,
                 overwrite: bool = False, show_progress: bool = True, port_column: Optional[str] = None,
                 proto_column: Optional[str] = None, max_flows: int = 0, workers: int = 1) -> Dict:
    """Import flow files into ``out`` (train.parquet, test.parquet + gallery_query.parquet when
    ``test_classes`` > 0 or ``test_fraction`` > 0, meta.json). One row per flow (two passes: class
    names, then rows), or one row per packet when ``flow_id_column`` is given (one pass, then the
    flows). ``test_fraction``: closed set, that share of each training class's flows (seeded,
    :class:`~xclass.importers.common.RowSplit`) goes to test with its training label.
    ``port_column`` / ``proto_column`` (one row per flow): the flow's service port and IP
    protocol (6/tcp, 17/udp), stored as ``server_port`` / ``ip_proto`` (e.g. CESNET's DST_PORT
    and PROTOCOL). ``max_flows`` > 0: at most that many flows per class (a seeded sample spread
    over the input, taken before the split). ``workers``: one row per flow, record batches
    converted in that many processes (the dataset is the same)."""
    inputs = expand_inputs(inputs, FLOW_SUFFIXES, "flow")
    if not 0.0 <= test_fraction < 1.0:
        raise ImportError_(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if (port_column or proto_column) and flow_id_column:
        raise ImportError_("--port-column and --proto-column are for one row per flow, not with --flow-id-column")
    source: Dict[str, Any] = {"importer": "flows", "files": [os.path.abspath(p) for p in inputs],
                              "label_column": label_column}
    if flow_id_column:
        from xclass.importers.flow_packets import PacketColumns, read_packet_flows

        cols = PacketColumns.parse(flow_id_column, time_column, size_column, label_column, direction_column,
                                   src_column, time_unit, bool(ppi_column or sizes_column or dirs_column
                                                               or iat_column or stats_map), bidirectional)
        source.update(format="packets", flow_id_columns=list(cols.flow_id), time_unit=time_unit,
                      bidirectional=bidirectional or None)
        return write_flows(out, lambda: read_packet_flows(inputs, cols, num_packets, show_progress), source,
                           num_packets, test_classes, seed, overwrite, test_fraction, max_flows=max_flows)
    if time_column or size_column or direction_column or src_column or bidirectional:
        raise ImportError_("--time-column, --size-column, --direction-column, --src-column and --bidirectional "
                           "need --flow-id-column (one row per packet)")

    if ppi_column is None and not (sizes_column and dirs_column and iat_column):
        raise ImportError_("give --ppi-column, or all of --sizes-column, --dirs-column, --iat-column")
    smap = parse_stats_map(stats_map)
    read = lambda: _flow_rows(inputs, label_column, ppi_column, [sizes_column, dirs_column, iat_column],  # noqa: E731
                              smap, num_packets, show_progress, (port_column, proto_column), workers)
    return write_flows(out, read, source, num_packets, test_classes, seed, overwrite, test_fraction, max_flows=max_flows)


def _flow_rows(inputs: Sequence[str], label_column: str, ppi_column: Optional[str], list_columns: List[str],
               smap: Dict[str, str], n: int, show_progress: bool,
               port_cols: Tuple[Optional[str], Optional[str]] = (None, None), workers: int = 1) -> Rows:
    """One row per flow: flows per class name (first pass), then ``(class, packets)`` per row (second
    pass, record batches converted in ``workers`` processes, rows in file order); a row's
    ``source`` is its file's position in ``inputs``."""
    from tqdm import tqdm

    pkt_cols = [ppi_column] if ppi_column else list_columns
    counts = Counter(str(r[label_column]) for r, _, _ in FlowSource(inputs, [label_column]))
    extra = [c for c in port_cols if c]
    convert = partial(convert_batch, label_column=label_column, ppi_column=ppi_column, pkt_cols=pkt_cols, n=n,
                      smap=smap, port_cols=port_cols, index=first_positions(inputs))
    batches = FlowSource(inputs, [label_column, *pkt_cols, *smap.values(), *extra]).batches()
    rows = (r for part in decode_in_order(convert, batches, workers, chunksize=1) for r in part)
    return dict(counts), iter(tqdm(rows, desc="import flows", unit="flows", disable=not show_progress))


