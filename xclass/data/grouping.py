""""M rows per class" arrangement of a reader window (``data.sampler: m_per_class``), and the
class weights of ``data.sampler: class_balanced`` (:func:`class_row_weights`, :func:`balanced_draw`).

Metric-learning losses (the angular prototypical head) need several rows of the same class in
a batch; a shuffled stream over thousands of classes almost never gives them. Within each
window the streaming reader already holds, :func:`group_rows` arranges the rows into groups of
exactly ``m`` rows of one label, in random group order (the recipe of voxceleb_trainer's
``nPerSpeaker`` sampler and pytorch-metric-learning's ``MPerClassSampler``, but over a bounded
window of a stream instead of a full index). A label's rows that do not fill a group
(fewer than ``m``) are *carried* into the next window's pool and are grouped first there; what
is still carried at the end of the epoch is emitted last by :func:`tail_order`.
:func:`arrange_windows` applies both to the reader's window tables.

Every output except the tail is a multiple of ``m`` rows, so batches of a multiple of ``m``
rows are whole groups until the tail starts. The tail holds fewer than ``m`` rows per label
(for ``m = 2``: one row per label with an odd count); with ``drop_last`` the part of it past
the last full batch is skipped that epoch. Memory: the carry adds fewer than ``m`` rows per
label seen to the reader's window. ``group_rows`` and ``tail_order`` are pure numpy: the same
(labels, rng state) give the same indices.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.config_types import ConfigError
from xclass.data.schema import TASK_COLUMNS, DataError


def _label_runs(labels: np.ndarray, seq: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``seq`` stably sorted by label, plus each position's rank within its label run and the
    size of that run."""
    seq = seq[np.argsort(labels[seq], kind="stable")]
    if len(seq) == 0:
        return seq, seq.copy(), seq.copy()
    lab = labels[seq]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sizes = np.diff(np.r_[starts, len(seq)])
    run = np.repeat(np.arange(len(starts)), sizes)
    return seq, np.arange(len(seq)) - starts[run], sizes[run]


def group_rows(labels: np.ndarray, rng: np.random.Generator, m: int,
               n_carry: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Arrange one window's pool into groups of ``m`` same-label rows.

    Args:
        labels: ``[n]`` labels of the pool: the ``n_carry`` rows carried from earlier windows
            first (in the order the previous call returned them), then the window's rows.
        rng: the window's generator (consumed: one permutation of the window's rows, one of
            the groups).
        m: rows per group (>= 1).
        n_carry: how many leading pool rows are carried rows.

    Returns:
        ``(order, carry)``: indices into the pool. ``order`` (a multiple of ``m`` long) is the
        emission: whole groups of ``m`` rows with one label each, groups in random order.
        ``carry`` holds, for every label with ``k`` pool rows, its last ``k % m`` rows, sorted
        by label. Within a label the carried rows come before the window's rows (themselves
        randomly permuted), so a carried row is emitted as soon as its label fills a group.
        Every pool row is in exactly one of the two.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= n_carry <= n:
        raise ValueError(f"n_carry={n_carry} not in [0, {n}]")
    seq = np.r_[np.arange(n_carry), n_carry + rng.permutation(n - n_carry)].astype(np.int64)
    seq, rank, size = _label_runs(labels, seq)
    grouped = rank < size - size % m
    groups = seq[grouped].reshape(-1, m)
    order = groups[rng.permutation(len(groups))].reshape(-1)
    return order, seq[~grouped]


def tail_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Order of the rows still carried at the end of an epoch: same-label rows kept together
    (fewer than ``m`` each, so no full group is possible), label runs in random order."""
    labels = np.asarray(labels)
    seq, rank, _ = _label_runs(labels, np.arange(len(labels), dtype=np.int64))
    run = np.cumsum(rank == 0) - 1
    place = rng.permutation(int(run[-1]) + 1 if len(run) else 0)  # run -> its new position
    return seq[np.lexsort((rank, place[run]))]


def arrange_windows(tables: Iterable[pa.Table], seed: List[int], m: int,
                    label_column: str) -> Iterator[pa.Table]:
    """The m-per-class stream: window ``w`` (with the carry before it) arranged by
    :func:`group_rows` with ``default_rng(seed + [w])``, then the last carry by
    :func:`tail_order` with ``default_rng(seed + [number of windows])``."""

    def rng(w: int) -> np.random.Generator:
        return np.random.default_rng(list(seed) + [w])

    carry, w = None, 0
    for w, table in enumerate(tables):
        pool = (pa.concat_tables([carry, table]) if carry is not None else table).combine_chunks()
        n_carry = carry.num_rows if carry is not None else 0
        order, rest = group_rows(pool.column(label_column).to_numpy(), rng(w), m, n_carry)
        carry = pool.take(pa.array(rest))
        yield pool.take(pa.array(order))
    if carry is not None and carry.num_rows:
        yield carry.take(pa.array(tail_order(carry.column(label_column).to_numpy(), rng(w + 1))))


def class_row_weights(files: List[str], label_column: str, power: float) -> np.ndarray:
    """Weight per class id ``[C]`` of one of its rows, ``N_c ** -power`` over all ``files``
    (0 for ids with no row); a negative id is a DataError naming the column."""
    labels = np.concatenate([np.asarray(pq.read_table(f, columns=[label_column])[label_column])
                             for f in files]).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError("negative class id with class-balanced sampling", column=label_column)
    counts = np.bincount(labels).astype(np.float64)
    return np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)


def balanced_draw(labels: np.ndarray, row_weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``len(labels)`` row indices of a window drawn with replacement, row i with probability
    proportional to ``row_weight[labels[i]]``."""
    w = row_weight[labels]
    return rng.choice(len(w), size=len(w), replace=True, p=w / w.sum())


def check_sampler(data: Any, world_size: int) -> None:
    """Raise ConfigError naming the keys when ``data.sampler`` (of a ``DataConfig``) cannot work
    at ``world_size`` ranks: called on config load (``cluster.workers``) and by ``make_reader``."""
    if data.sampler == "shuffle":
        return
    if data.sampler not in ("m_per_class", "class_balanced"):
        raise ConfigError(f"key 'data.sampler' must be shuffle, m_per_class or class_balanced, got {data.sampler!r}")
    if not any(c.name == "label" for c in TASK_COLUMNS.get(data.task, ())):
        raise ConfigError(f"key 'data.sampler: {data.sampler}' needs a single-label task (a 'label' "
                          f"column); data.task={data.task!r} is not one")
    if data.sampler == "class_balanced":
        if not 0.0 < data.balance_power <= 1.0:
            raise ConfigError(f"key 'data.balance_power' must be in (0, 1], got {data.balance_power}")
        return
    if data.m_per_class < 2:
        raise ConfigError(f"key 'data.m_per_class' must be >= 2 with data.sampler=m_per_class, "
                          f"got {data.m_per_class}")
    per_rank = max(1, data.batch_size // max(1, world_size))
    if per_rank % data.m_per_class:
        raise ConfigError(f"keys 'data.batch_size' / 'data.m_per_class': each of {world_size} rank(s) "
                          f"reads data.batch_size // world size = {per_rank} rows, not a multiple of "
                          f"data.m_per_class={data.m_per_class} (data.sampler=m_per_class)")
