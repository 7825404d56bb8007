"""ParquetReader: deterministic, sharded, resumable streaming over Parquet row groups.

Epoch plan (the same on every rank, computed from file metadata only):

1. All row groups of all files form one list; with ``shuffle`` it is permuted by
   ``rng(seed, epoch)``. Concatenated, they form a *global row stream* of ``N`` rows.
2. Rank ``r`` of ``W`` takes the contiguous stream slice ``[r*N//W, (r+1)*N//W)`` (row
   groups on a boundary are split), so every row is read exactly once per epoch across
   ranks and rank row counts differ by at most one.
3. The rank's slice is cut into *windows* of whole pieces holding >= ``buffer_rows`` rows;
   each window is read, permuted by ``rng(seed, epoch, rank, window)`` and appended to the
   output stream, which is cut into batches of ``batch_rows`` rows. Memory is bounded by
   about two windows (read + permuted copy) + one batch; a window is at least one row
   group, so write files with row groups of moderate size (the generators do).
4. ``m_per_class=M`` (``data.sampler: m_per_class``) replaces step 3's permutation: each window
   (plus the rows carried from earlier ones) becomes shuffled groups of M same-label rows, a
   label's remainder is carried on, the epoch's last carry comes last (``xclass.data.grouping``).

Equal step counts: every rank yields ``batches_per_epoch()`` batches. With
``drop_last=False`` that is ``ceil(ceil(N/W) / batch_rows)``; all batches are full except
each rank's last one, which may be smaller and even empty (0 rows) on ranks holding one
row fewer. With ``drop_last=True`` it is ``(N//W) // batch_rows`` full batches and the
rest of each rank's rows (fewer than ``batch_rows + 1``) is skipped that epoch.

Batches are ``dict[str, np.ndarray]`` in the layout of
:func:`xclass.data.arrow.table_to_numpy`. Batches are *sharded over the batch* (each rank its own rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.arrow import decoded_bytes, expand_paths, table_to_numpy
from xclass.data.grouping import arrange_windows, balanced_draw, class_row_weights
from xclass.data.schema import DataError, read_task_meta


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of row group ``rg`` of file number ``file``."""

    file: int
    rg: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ParquetReader:
    """Iterate one rank's batches of an epoch; see the module docstring for the plan.

    Args:
        paths: files, directories or globs; every rank must pass the same list.
        columns: columns to read (each must exist in every file).
        rank, world_size: this process's data-parallel position.
        batch_rows: rows per batch on this rank (local batch size).
        seed: base seed; the order is a function of (seed, epoch, rank, world_size) only.
        drop_last: see "Equal step counts" above.
        shuffle: False keeps file/row-group/row order (evaluation, embedding export).
        buffer_rows: rows shuffled together (bounded memory; larger = better mixing).
            Default: about ``buffer_bytes`` of decoded data (estimated from Parquet
            metadata: leaf value counts), at least ``batch_rows``, at most 65536 rows.
        buffer_bytes: target window size when ``buffer_rows`` is None (default 64 MiB).
        m_per_class: 0 = plain shuffle; M >= 1 = groups of M rows of one ``label_column`` (a
            read single-label column) value, step 4 above; ``batch_rows`` a multiple of M.
        balance_power: 0 = plain shuffle; p in (0, 1] = class-balanced sampling: each window's
            n rows are replaced by n rows drawn from it with replacement, a row of class c with
            probability proportional to ``N_c ** -p`` (``N_c``: the class's rows in all files;
            p = 1 gives every class the same share, p = 0.5 square-root sampling). Windows keep
            their sizes, so step counts and resume are as without it.
    """

    def __init__(self, paths, columns: Sequence[str], *, rank: int = 0, world_size: int = 1,
                 batch_rows: int, seed: int = 0, drop_last: bool = False, shuffle: bool = True,
                 buffer_rows: Optional[int] = None, buffer_bytes: int = 64 << 20,
                 m_per_class: int = 0, label_column: str = "label", balance_power: float = 0.0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be > 0, got {batch_rows}")
        if m_per_class and (m_per_class < 0 or batch_rows % m_per_class or not shuffle
                            or label_column not in columns):
            raise ValueError(f"m_per_class={m_per_class} needs batch_rows={batch_rows} a multiple of "
                             f"it, shuffle=True and the label column {label_column!r} in the columns")
        if balance_power and (not 0.0 < balance_power <= 1.0 or m_per_class or not shuffle
                              or label_column not in columns):
            raise ValueError(f"balance_power={balance_power} needs a value in (0, 1], m_per_class=0, "
                             f"shuffle=True and the label column {label_column!r} in the columns")
        self.m_per_class, self.label_column = m_per_class, label_column
        self.balance_power = float(balance_power)
        self._row_weight: Optional[np.ndarray] = None  # per class id, built on first use
        self.files = expand_paths(paths)
        self.columns = list(columns)
        self.rank, self.world_size, self.batch_rows = rank, world_size, batch_rows
        self.seed, self.drop_last, self.shuffle = seed, drop_last, shuffle
        self._groups: List[Tuple[int, int, int]] = []  # (file, row group, rows)
        self._bytes = 0  # decoded bytes of the read columns (sizes the shuffle window)
        self.metadata: Dict = {}
        self._schema: Optional[pa.Schema] = None
        for fi, path in enumerate(self.files):
            self._scan(fi, path)
        self.num_rows = sum(n for _, _, n in self._groups)
        if buffer_rows is None:
            per_row = max(1.0, self._bytes / max(1, self.num_rows))
            buffer_rows = min(65536, max(batch_rows, int(buffer_bytes / per_row)))
        self.buffer_rows = max(1, buffer_rows)
        self.epoch, self._skip = 0, 0
        self._batch_index = 0
        self._handles: Dict[int, pq.ParquetFile] = {}

    def _scan(self, fi: int, path: str) -> None:
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"not a readable Parquet file ({exc})", file=path) from None
        schema = pf.schema_arrow
        for c in self.columns:
            if c not in schema.names:
                raise DataError("missing column", file=path, column=c)
        if self._schema is None:
            self._schema = pa.schema([schema.field(c) for c in self.columns])
            self.metadata = read_task_meta(schema)
        for rg in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(rg)
            n = meta.num_rows
            self._bytes += decoded_bytes(meta, self.columns)
            if n:
                self._groups.append((fi, rg, n))

    # ---- step counts -------------------------------------------------------------------
    def rows_for_rank(self, rank: int) -> int:
        """Rows rank ``rank`` owns each epoch (before ``drop_last``)."""
        n, w = self.num_rows, self.world_size
        return (rank + 1) * n // w - rank * n // w

    def batches_per_epoch(self) -> int:
        """Steps per epoch; identical on every rank."""
        n, w, b = self.num_rows, self.world_size, self.batch_rows
        if self.drop_last:
            return (n // w) // b
        return -(-(-(-n // w)) // b)

    def __len__(self) -> int:
        return self.batches_per_epoch()

    # ---- epoch and resume state -----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch. A pending resume position survives only for the same epoch."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def state_dict(self) -> Dict[str, int]:
        """Position to resume from: the epoch and the number of batches already yielded."""
        return {"epoch": self.epoch, "batch": self._batch_index, "seed": self.seed,
                "world_size": self.world_size, "num_rows": self.num_rows,
                "m_per_class": self.m_per_class, "balance_power": self.balance_power}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """The next ``__iter__`` continues epoch ``state['epoch']`` after ``state['batch']`` batches."""
        for key in ("seed", "world_size", "num_rows", "m_per_class", "balance_power"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"reader state has {key}={state[key]}, this reader has "
                                 f"{getattr(self, key)}; resume needs the same data and layout")
        self.epoch, self._skip = int(state["epoch"]), int(state["batch"])
        self._batch_index = self._skip

    # ---- planning -------------------------------------------------------------------------
    def plan(self, rank: Optional[int] = None) -> List[Piece]:
        """This epoch's pieces for ``rank`` (default: own rank), in read order."""
        rank = self.rank if rank is None else rank
        order = np.arange(len(self._groups))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self._groups))
        sizes = np.array([self._groups[i][2] for i in order], dtype=np.int64)
        ends = np.cumsum(sizes)
        lo, hi = rank * self.num_rows // self.world_size, (rank + 1) * self.num_rows // self.world_size
        pieces: List[Piece] = []
        k = int(np.searchsorted(ends, lo, side="right"))
        while k < len(order) and lo < hi:
            fi, rg, _ = self._groups[order[k]]
            g0 = int(ends[k] - sizes[k])
            stop = min(hi, int(ends[k]))
            pieces.append(Piece(fi, rg, lo - g0, stop - g0))
            lo, k = stop, k + 1
        return pieces

    def _windows(self, pieces: List[Piece]) -> List[List[Piece]]:
        windows: List[List[Piece]] = [[]]
        rows = 0
        for p in pieces:
            if rows >= self.buffer_rows:
                windows.append([])
                rows = 0
            windows[-1].append(p)
            rows += p.rows
        return windows if windows[0] else []

    def _read(self, p: Piece) -> pa.Table:
        pf = self._handles.get(p.file)
        if pf is None:
            pf = self._handles[p.file] = pq.ParquetFile(self.files[p.file])
        t = pf.read_row_group(p.rg, columns=self.columns)
        if not t.schema.equals(self._schema, check_metadata=False):
            t = t.cast(self._schema)  # files may differ in integer widths; batches must not
        return t.slice(p.start, p.rows) if (p.start, p.stop) != (0, t.num_rows) else t

    # ---- iteration --------------------------------------------------------------------------
    def _row_stream(self, skip_rows: int) -> Iterator[pa.Table]:
        """Permuted windows of this rank's rows, minus the first ``skip_rows`` rows."""
        windows = self._windows(self.plan())
        if self.m_per_class:  # step 4; resume re-reads skipped windows (the carry depends on them)
            tables = (pa.concat_tables([self._read(p) for p in win]) for win in windows)
            seed = [self.seed, self.epoch, self.rank]
            for t in arrange_windows(tables, seed, self.m_per_class, self.label_column):
                if skip_rows < t.num_rows:
                    yield t.slice(skip_rows)
                skip_rows = max(0, skip_rows - t.num_rows)
            return
        for w, win in enumerate(windows):
            n = sum(p.rows for p in win)
            if skip_rows >= n:  # resume: skip whole windows without reading them
                skip_rows -= n
                continue
            t = pa.concat_tables([self._read(p) for p in win])
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, w])
                # take on one contiguous chunk is ~10x faster than on a chunked list column
                t = t.combine_chunks().take(pa.array(self._draw(t, rng) if self.balance_power else rng.permutation(n)))
            yield t.slice(skip_rows)
            skip_rows = 0

    def _draw(self, t: pa.Table, rng: np.random.Generator) -> np.ndarray:
        """Class-balanced row indices ``[n]`` into window ``t`` (with replacement)."""
        if self._row_weight is None:
            self._row_weight = class_row_weights(self.files, self.label_column, self.balance_power)
        return balanced_draw(np.asarray(t[self.label_column]).astype(np.int64), self._row_weight, rng)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        steps, b = self.batches_per_epoch(), self.batch_rows
        start = min(self._skip, steps)
        self._skip = 0
        self._batch_index = start
        carry: List[pa.Table] = []
        have = 0
        for t in self._row_stream(start * b):
            carry.append(t)
            have += t.num_rows
            while have >= b and self._batch_index < steps:
                cat = pa.concat_tables(carry)
                yield self._emit(cat.slice(0, b))
                carry, have = [cat.slice(b)], have - b
            if self._batch_index >= steps:
                return
        while self._batch_index < steps:  # ragged last batch, then empty ones if needed
            rest = pa.concat_tables(carry) if carry else self._schema.empty_table()
            carry, have = [], 0
            yield self._emit(rest)

    def _emit(self, t: pa.Table) -> Dict[str, np.ndarray]:
        self._batch_index += 1
        return table_to_numpy(t)
