"""Shared pieces of the importers: file discovery with labels, train/test split, verification
pairs for held-out rows, a streaming split writer and meta.json (the shape ``xclass train`` reads).

Every importer: discover ``(path, label name)`` items -> assign each item to train or test ->
decode items one by one (unreadable file -> :class:`ImportError_` naming the file) -> write
chunks with :class:`~xclass.data.writer.PartWriter` inside :func:`~xclass.data.writer.atomic_dir`.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.schema import SCHEMA_VERSION
from xclass.data.writer import PartWriter, write_json
from xclass.tasks import get_task


class ImportError_(ValueError):
    """A file or row that cannot be imported; the message names it (``file``, ``row``)."""

    def __init__(self, message: str, file: str = "", row: Optional[int] = None) -> None:
        super().__init__(message)
        self.file, self.row = file, row

    def __reduce__(self):  # raised in a decoding worker process, re-raised whole in the importer
        return type(self), (str(self), self.file, self.row)


def compile_option(flag: str, pattern: Optional[str]) -> Optional["re.Pattern"]:
    """``pattern`` compiled (None stays None); one that is not a regular expression is an
    ImportError_ naming ``flag``."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ImportError_(f"{flag} {pattern!r} is not a regular expression: {exc}") from None


@dataclass
class Item:
    path: str
    label_name: str
    split: str = "train"
    label: int = -1

    def relative(self, root: str) -> str:
        """The file's path below ``root``, ``/``-separated."""
        return os.path.relpath(self.path, root).replace(os.sep, "/")


def discover(root: str, exts: Sequence[str], label_regex: Optional[str] = None) -> List[Item]:
    """Files under ``root`` with one of ``exts`` (case-insensitive), sorted by relative path.
    Label name: the first folder below ``root`` (one folder per class), or group 1 of
    ``label_regex`` searched in the relative path (e.g. ``^\\d+_([a-z]+)_`` for FSDD names)."""
    if not os.path.isdir(root):
        raise ImportError_(f"{root}: not a directory", file=root)
    rx = compile_option("--label-regex", label_regex)
    items: List[Item] = []
    top = os.path.realpath(root)
    for dirpath, _, files in os.walk(root):  # symlinked folders are not entered
        for f in files:
            if not f.lower().endswith(tuple(e.lower() for e in exts)):
                continue
            full = os.path.join(dirpath, f)
            if os.path.commonpath([os.path.realpath(full), top]) != top:
                raise ImportError_(f"{full}: symlink points outside the import root {root}; refused", file=full)
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if rx is not None:
                m = rx.search(rel)
                if m is None or not m.groups():
                    raise ImportError_(f"{os.path.join(root, rel)}: --label-regex {label_regex!r} does not "
                                       f"match (or has no group)", file=os.path.join(root, rel))
                name = m.group(1)
            else:
                parts = rel.split(os.sep)
                if len(parts) < 2:
                    raise ImportError_(f"{os.path.join(root, rel)}: file directly under the root; expected "
                                       f"one folder per class (or pass --label-regex)", file=os.path.join(root, rel))
                name = parts[0]
            items.append(Item(os.path.join(root, rel), name))
    items.sort(key=lambda it: it.path)
    if not items:
        raise ImportError_(f"{root}: no files with extensions {list(exts)}", file=root)
    return items


def assign_splits(items: List[Item], *, test_classes: int = 0, test_regex: Optional[str] = None,
                  seed: int = 0, test_only: bool = False) -> Tuple[List[str], List[str]]:
    """Set each item's split and integer label. Returns (train class names, test class names).

    ``test_regex``: items whose path matches go to test with the SAME label space as train
    (held-out recordings of known classes). ``test_classes``: that many classes (seeded choice)
    go entirely to test with labels ``[C, C + T)`` (open set, as make-data). Train labels are the
    sorted class names' indices. ``test_only``: every class is held out (a benchmark imported to
    be encoded by a model trained elsewhere)."""
    names = sorted({it.label_name for it in items})
    held: set = set(names) if test_only else set()
    if test_only and (test_classes or test_regex):
        raise ImportError_("--test-only puts every file in the test split: leave out --test-classes and --test-regex")
    if test_classes:
        if test_classes >= len(names):
            raise ImportError_(f"--test-classes {test_classes} leaves no training class ({len(names)} classes)")
        perm = np.random.default_rng(seed).permutation(len(names))
        held = {names[i] for i in perm[:test_classes]}
    train_names = [n for n in names if n not in held]
    test_names = sorted(held)
    index = {n: i for i, n in enumerate(train_names)}
    index.update({n: len(train_names) + i for i, n in enumerate(test_names)})
    rx = compile_option("--test-regex", test_regex)
    for it in items:
        it.label = index[it.label_name]
        it.split = "test" if it.label_name in held or (rx is not None and rx.search(it.path)) else "train"
    return train_names, test_names


def balanced_pairs(ids: np.ndarray, labels: np.ndarray, num_pairs: int, seed: int,
                   impostor_ratio: float = 1.0) -> Dict[str, np.ndarray]:
    """Up to ``num_pairs`` pairs (a, b, same) of distinct rows, seeded, in shuffled order:
    ``n_pos = min(num_pairs // 2, same-label pairs available)`` genuine pairs and
    ``min(num_pairs - n_pos, round(impostor_ratio * n_pos))`` impostors, so the default file is
    balanced (like LFW's 3,000 + 3,000) even when the data has few same-label pairs (no
    same-label pair at all: ``num_pairs`` impostors). Never duplicates a pair."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    if n < 2 or len(np.unique(labels)) < 2:
        raise ImportError_("the test split needs >= 2 rows of >= 2 classes to build pairs/trials")
    groups = {}
    for i, y in enumerate(labels.tolist()):
        groups.setdefault(y, []).append(i)
    n_same = sum(len(g) * (len(g) - 1) // 2 for g in groups.values())
    n_pos = min(num_pairs // 2, n_same)
    multi = np.array([i for g in groups.values() if len(g) > 1 for i in g])
    pos_set: set = set()
    while len(pos_set) < n_pos:  # rejection sampling: a row, then another row of its class
        i = int(multi[rng.integers(0, len(multi))])
        g = groups[int(labels[i])]
        j = g[int(rng.integers(0, len(g)))]
        if i != j:
            pos_set.add((min(i, j), max(i, j)))
    pos = sorted(pos_set)
    neg: set = set()
    tries = 0
    n_neg = min(num_pairs - n_pos, int(round(impostor_ratio * n_pos))) if n_pos else num_pairs
    while len(neg) < n_neg and tries < 100 * num_pairs:
        i, j = rng.integers(0, n, 2)
        tries += 1
        if labels[i] != labels[j]:
            neg.add((min(i, j), max(i, j)))
    pairs = pos + sorted(neg)
    same = np.array([True] * len(pos) + [False] * len(neg))
    order = rng.permutation(len(pairs))            # genuine and impostor pairs interleaved
    a = np.array([ids[pairs[k][0]] for k in order], np.int64)
    b = np.array([ids[pairs[k][1]] for k in order], np.int64)
    return {"a": a, "b": b, "same": same[order]}


class RowSplit:
    """Streaming systematic sampling per class with a seeded random phase: flow k (0-based, in
    file order) of a class is picked when ``floor((k + 1) f + u)`` > ``floor(k f + u)`` (``u``
    uniform in [0, 1 - f) per class), so a class picks ``floor(n f + u)``, i.e. ``floor(n f)``
    or ``ceil(n f)``, of its ``n`` flows, spread over the file; with ``f`` < 1 its first flow
    (k = 0) is never picked. The closed-set split picks test rows with one ``fraction`` for all
    classes (every class keeps training rows); a label cap picks the kept rows with ``f = cap /
    n`` per class (``per_class``), exactly ``cap`` of them."""

    def __init__(self, fraction: float, seed: int, per_class: Optional[Dict[Hashable, float]] = None,
                 salt: int = 7919) -> None:
        self.f, self.per_class, self.rng = fraction, per_class or {}, np.random.default_rng(seed + salt)
        self.k: Dict[Hashable, int] = {}
        self.u: Dict[Hashable, float] = {}

    def pick(self, name: Hashable) -> bool:
        """Whether the next flow of class ``name`` (any hashable key) is picked."""
        f = self.per_class.get(name, self.f)
        if f <= 0:
            return False
        if name not in self.k:
            self.k[name], self.u[name] = 0, float(self.rng.random()) * (1.0 - f)
        k, u = self.k[name], self.u[name]
        self.k[name] = k + 1
        return math.floor((k + 1) * f + u) > math.floor(k * f + u)


def write_pairs(path: str, pairs: Dict[str, np.ndarray], names: Tuple[str, str, str]) -> None:
    """A verification file with the task's three column ``names`` (face ``pairs.parquet``: a, b,
    same; speaker ``trials.parquet``: enroll, test, target) from ``pairs`` a, b, same, and
    ``fold`` when ``pairs`` has one (a published protocol's folds)."""
    cols = {names[0]: pairs["a"], names[1]: pairs["b"], names[2]: pairs["same"]}
    pq.write_table(pa.table({**cols, **({"fold": pairs["fold"]} if "fold" in pairs else {})}), path)


@dataclass
class SplitWriters:
    """One :class:`PartWriter` per split, buffering rows into chunks of ``chunk_rows``."""

    tmp: str
    schema: pa.Schema
    to_arrow: Callable[[List[dict]], Dict[str, pa.Array]]
    chunk_rows: int = 256
    writers: Dict[str, PartWriter] = field(default_factory=dict)
    buffers: Dict[str, List[dict]] = field(default_factory=dict)
    ids: Dict[str, List[int]] = field(default_factory=dict)
    labels: Dict[str, List[int]] = field(default_factory=dict)
    #: (id, split, label, input file relative to the root) of every row added with a ``source``
    sources: List[tuple] = field(default_factory=list)

    def add(self, split: str, row: dict, source: Optional[str] = None) -> None:
        """Buffer one row of ``split``; ``source``: the input file it came from (for files.parquet)."""
        if source is not None:
            self.sources.append((int(row["id"]), split, int(row["label"]), source))
        if split not in self.writers:
            self.writers[split] = PartWriter(os.path.join(self.tmp, f"{split}.parquet"), self.schema,
                                             row_group_rows=4096)
            self.buffers[split], self.ids[split], self.labels[split] = [], [], []
        self.buffers[split].append(row)
        self.ids[split].append(int(row["id"]))
        self.labels[split].append(int(row["label"]))
        if len(self.buffers[split]) >= self.chunk_rows:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            self.writers[split].write(self.to_arrow(self.buffers[split]))
            self.buffers[split] = []

    def close(self) -> Dict[str, Dict]:
        info = {}
        for split, w in self.writers.items():
            self._flush(split)
            w.close()
            info[split] = split_info(split, np.array(self.ids[split]), np.array(self.labels[split]))
        return info


def ip_proto(v: Any, where: str, **err: Any) -> int:
    """6 for ``6``/``tcp``, 17 for ``17``/``udp`` (any case); an :class:`ImportError_` starting
    with ``where`` (and carrying ``err``: file, row) otherwise."""
    s = str(v).strip().lower()
    if s in ("6", "tcp"):
        return 6
    if s in ("17", "udp"):
        return 17
    raise ImportError_(f"{where}: protocol must be 6/tcp or 17/udp, got {v!r}", **err)


def split_info(split: str, ids: np.ndarray, labels: np.ndarray) -> Dict:
    """meta.json's entry of a one-file split: file, row count, id and label ranges (half-open)."""
    return {"files": [f"{split}.parquet"], "rows": int(len(ids)), "id_range": [int(ids.min()), int(ids.max()) + 1],
            "label_range": [int(labels.min()), int(labels.max()) + 1]}


def finish(tmp: str, task: str, writers: SplitWriters, train_names: List[str], test_names: List[str],
           inputs: Dict, source: Dict, num_pairs: int, seed: int, impostor_ratio: float = 1.0,
           protocol: Optional[Dict[str, np.ndarray]] = None, test_only: bool = False) -> Dict:
    """Close the writers, write pairs/trials for the test split and meta.json; returns meta.
    ``protocol``: the pairs of a published protocol (a, b, same[, fold] in row ids) instead of
    drawn ones; such a dataset may be a test set alone (no training split)."""
    splits = writers.close()
    if "train" not in splits and protocol is None and not test_only:
        raise ImportError_("no file went to the training split (check --test-regex / --test-classes)")
    meta: Dict = {"task": task, "schema_version": SCHEMA_VERSION, "seed": seed,
                  "num_classes": len(train_names), "test_classes": len(test_names),
                  "class_names": train_names + test_names, "inputs": inputs, "splits": splits,
                  "source": source}
    if writers.sources:
        meta["file_map"] = write_file_map(os.path.join(tmp, FILE_MAP), writers.sources)
    spec = get_task(task).pairs
    drawn = not (test_only and (num_pairs == 0 or len(test_names) < 2))  # a test-only set may have no pairs
    if "test" in splits and spec is not None and (protocol is not None or drawn):
        pairs = protocol if protocol is not None else balanced_pairs(
            np.array(writers.ids["test"]), np.array(writers.labels["test"]), num_pairs, seed, impostor_ratio)
        fname = spec.file
        write_pairs(os.path.join(tmp, fname), pairs, spec.columns)
        meta[spec.meta_key] = {"file": fname, "rows": int(len(pairs["a"])), "positives": int(pairs["same"].sum()),
                               **({"folds": int(pairs["fold"].max()) + 1} if "fold" in pairs else {})}
    write_json(os.path.join(tmp, "meta.json"), meta)
    return meta


#: the file of a folder import that maps every row id to its input file
FILE_MAP = "files.parquet"


def write_file_map(path: str, sources: List[tuple]) -> Dict:
    """files.parquet: ``id`` int64, ``split``, ``label`` int64 and ``path`` (the input file relative
    to the import's root, ``/``-separated) of every row, in id order; meta.json's entry for it."""
    ids, splits, labels, paths = (list(x) for x in zip(*sorted(sources)))
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "split": pa.array(splits, pa.string()),
                             "label": pa.array(labels, pa.int64()), "path": pa.array(paths, pa.string())}), path)
    return {"file": os.path.basename(path), "rows": len(ids), "columns": ["id", "split", "label", "path"]}


def progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="files", disable=not enabled)
