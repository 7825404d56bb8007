"""Extreme Classification Repository formats <-> the xclass XMC Parquet schema.

Read (streamed, bounded memory, progress on stderr):

- BoW single file (``train.txt`` / ``test.txt``): header ``num_rows num_features num_labels``,
  then per row ``l1,l2,... f:v f:v ...`` (0-based ids; a row without labels starts with a
  space or directly with ``f:v``).
- Split format: a feature file (``trn_X_Xf.txt``) and a label file (``trn_X_Y.txt``), each with
  header ``num_rows num_cols`` and rows ``idx:val idx:val ...``; read in lockstep.
- Optional label side: label text (``Y.txt``: line i = text of label i) and label features
  (``lbl_X_Xf.txt``, sparse format) for the label tower.

Parquet written (``xclass make-data --task xmc`` layout): ``train.parquet`` / ``test.parquet``
with ``id`` int64, ``labels`` list<int64>, ``tokens`` list<int32> (feature ids: vocab_size =
num_features) and ``token_weights`` list<float32> (the feature values, e.g. tf-idf; the
encoders ignore them, the TF-IDF baseline uses them); ``labels.parquet`` (``label_id``,
``text``, ``tokens``, ``train_count``); ``meta.json``. Malformed input raises
:class:`~xclass.data.schema.DataError` naming the file and the 1-based line number.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from xclass.data.schema import DataError
from xclass.importers.xmc_dataset import write_xmc_dataset

Row = Tuple[List[int], List[int], List[float]]  # (labels, feature ids, values)


def _fail(path: str, line: int, reason: str) -> DataError:
    return DataError(f"line {line}: {reason}", file=path)


def _header(path: str, f, n: int) -> List[int]:
    text = f.readline()
    parts = text.split()
    if len(parts) != n or not all(p.isdigit() for p in parts):
        want = "num_rows num_features num_labels" if n == 3 else "num_rows num_cols"
        raise _fail(path, 1, f"header must be {n} non-negative integers ({want}), got {text.strip()!r}")
    return [int(p) for p in parts]


def _pairs(path: str, line: int, items: Sequence[str], ncols: int) -> Tuple[List[int], List[float]]:
    idx, val = [], []
    for it in items:
        k, sep, v = it.partition(":")
        try:
            j, x = int(k), float(v)
        except ValueError:
            j, x = -1, math.nan
        if not sep or j < 0 or not math.isfinite(x) or not k.isdigit():
            raise _fail(path, line, f"bad 'index:value' item {it!r}")
        if j >= ncols:
            raise _fail(path, line, f"index {j} >= number of columns {ncols} given in the header")
        idx.append(j)
        val.append(x)
    if len(set(idx)) != len(idx):
        raise _fail(path, line, "duplicate index in a row")
    return idx, val


def _labels(path: str, line: int, text: str, num_labels: int) -> List[int]:
    out = []
    for t in text.split(","):
        if not t.strip().isdigit():
            raise _fail(path, line, f"bad label id {t!r} (expected comma-separated integers)")
        lid = int(t)
        if lid >= num_labels:
            raise _fail(path, line, f"label {lid} >= num_labels {num_labels} given in the header")
        out.append(lid)
    return out


def _check_count(path: str, want: int, got: int) -> None:
    if got != want:
        raise _fail(path, got + 1, f"header says {want} rows, file has {got}")


def _open_text(path: str):
    """``path`` as text; bad bytes fail later as a bad item on their line (surrogate escapes)."""
    if not os.path.isfile(path):
        raise DataError("not a file" if os.path.exists(path) else "file not found", file=path)
    return open(path, encoding="utf-8", errors="surrogateescape")


def read_bow(path: str) -> Tuple[Tuple[int, int, int], Iterator[Row]]:
    """((num_rows, num_features, num_labels), row iterator) of a BoW single file."""
    f = _open_text(path)
    n, nf, nl = _header(path, f, 3)

    def rows() -> Iterator[Row]:
        count = 0
        with f:
            for count, text in enumerate(f, 1):
                line = count + 1
                items = text.split()
                first = items[0] if items else ""
                if first and ":" not in first:
                    labels, items = _labels(path, line, first, nl), items[1:]
                else:
                    labels = []
                idx, val = _pairs(path, line, items, nf)
                yield labels, idx, val
        _check_count(path, n, count)

    return (n, nf, nl), rows()


def read_sparse(path: str) -> Tuple[Tuple[int, int], Iterator[Tuple[List[int], List[float]]]]:
    """((num_rows, num_cols), iterator of (indices, values)) of a split-format sparse file."""
    f = _open_text(path)
    n, nc = _header(path, f, 2)

    def rows():
        count = 0
        with f:
            for count, text in enumerate(f, 1):
                yield _pairs(path, count + 1, text.split(), nc)
        _check_count(path, n, count)

    return (n, nc), rows()


def read_split(features: str, labels: str) -> Tuple[Tuple[int, int, int], Iterator[Row]]:
    """Split format (features file + label file, row-aligned) as BoW-style rows."""
    (n, nf), frows = read_sparse(features)
    (n2, nl), lrows = read_sparse(labels)
    if n != n2:
        raise DataError(f"{n2} rows in the header but {features} has {n}", file=labels)
    return (n, nf, nl), ((lab, f_i, f_v) for (f_i, f_v), (lab, _) in zip(frows, lrows))


def _fmt(v: float) -> str:
    return format(float(np.float32(v)), ".9g")  # float32 round-trips exactly


def write_bow(path: str, rows: Sequence[Row], num_features: int, num_labels: int) -> None:
    """Write rows in the BoW single-file format (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{len(rows)} {num_features} {num_labels}\n")
        for labels, idx, val in rows:
            feats = " ".join(f"{j}:{_fmt(v)}" for j, v in zip(idx, val))
            f.write(",".join(map(str, labels)) + (" " + feats if feats else "") + "\n")
    os.replace(tmp, path)


def write_sparse(path: str, rows: Sequence[Tuple[List[int], List[float]]], num_cols: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{len(rows)} {num_cols}\n")
        for idx, val in rows:
            f.write(" ".join(f"{j}:{_fmt(v)}" for j, v in zip(idx, val)) + "\n")
    os.replace(tmp, path)


def read_label_text(path: str, num_labels: int) -> List[str]:
    """``Y.txt``-style label text: line i is the text of label i."""
    with _open_text(path) as f:
        lines = [t.rstrip("\n").encode("utf-8", "surrogateescape").decode("utf-8", "replace") for t in f]
    if len(lines) != num_labels:
        raise _fail(path, len(lines), f"{len(lines)} lines of label text, the data has {num_labels} labels")
    return lines


def _open(features: str, labels: Optional[str]):
    return read_split(features, labels) if labels else read_bow(features)


def import_xc(out_dir: str, train: str, test: str, *, train_labels: Optional[str] = None,
              test_labels: Optional[str] = None, label_text: Optional[str] = None,
              label_features: Optional[str] = None, overwrite: bool = False, progress: bool = True,
              seed: int = 0) -> Dict:
    """Convert XC-repository files to an xclass XMC dataset directory; returns meta.json.
    The train rows are written in ``seed``'s random order (ids follow the input order).
    BoW: ``train``/``test`` are ``train.txt``/``test.txt``. Split format: ``train``/``test``
    are the feature files and ``train_labels``/``test_labels`` the label files."""
    if bool(train_labels) != bool(test_labels):
        raise ValueError("split format needs both train_labels and test_labels (or neither for BoW files)")
    (n_tr, nf, nl), tr_rows = _open(train, train_labels)
    (n_te, nf2, nl2), te_rows = _open(test, test_labels)
    if (nf2, nl2) != (nf, nl):
        raise DataError(f"header has {nf2} features / {nl2} labels, {train} has {nf} / {nl}", file=test)
    text = read_label_text(label_text, nl) if label_text else None
    tokens = None
    if label_features:
        (n_l, nf3), lrows = read_sparse(label_features)
        if n_l != nl or nf3 != nf:
            raise DataError(f"header {n_l} x {nf3}, expected {nl} labels x {nf} features", file=label_features)
        tokens = [idx for idx, _ in lrows]
    src = {"format": "xc-split" if train_labels else "xc-bow", "train": os.path.abspath(train),
           "test": os.path.abspath(test), "num_features": nf}
    return write_xmc_dataset(out_dir, {"train": tr_rows, "test": te_rows}, num_labels=nl, vocab_size=nf,
                             label_text=text, label_tokens=tokens, totals={"train": n_tr, "test": n_te},
                             source=src, overwrite=overwrite, progress=progress, shuffle_seed=seed)


def export_bow(data_dir: str, split: str, path: str) -> None:
    """Write an xclass XMC split back in the BoW single-file format (tokens as feature ids,
    token_weights as values, or 1.0 when absent)."""
    import pyarrow.parquet as pq

    from xclass.data.meta import load_meta

    meta = load_meta(data_dir)
    t = pq.read_table(os.path.join(data_dir, f"{split}.parquet"))
    t = t.take(np.argsort(t.column("id").to_numpy(), kind="stable"))  # input order (train is stored shuffled)
    labels, toks = t.column("labels").to_pylist(), t.column("tokens").to_pylist()
    wts = t.column("token_weights").to_pylist() if "token_weights" in t.column_names else \
        [[1.0] * len(x) for x in toks]
    write_bow(path, list(zip(labels, toks, wts)), int(meta["inputs"]["tokens"]["vocab_size"]),
              int(meta["num_classes"]))
