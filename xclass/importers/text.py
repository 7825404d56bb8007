"""``xclass import text``: documents with label lists (JSONL / CSV / TSV / Parquet) -> XMC dataset.

Input rows have a text column and a label-list column. A label list is a JSON/Parquet list, or
in CSV a string split on ``--label-sep`` (default ``|``; a cell starting with ``[`` is parsed as
JSON). Labels are names (ids given in order of first appearance, train then test, or the order
of ``--label-file``) or, with ``--label-ids``, integer ids in ``[0, num_labels)``.

Optional ``--label-file``: label text for the label tower, a ``.txt`` file (line i = text of
label i) or a JSONL / CSV / TSV / Parquet table with the label (name or id) in
``--label-file-column`` and its text in ``--label-text-column``; with it, every data label must
be listed there.

Two streaming passes (bounded memory apart from the vocabulary and the label map): pass 1
reads the train texts (vocabulary and document frequencies) and all label lists; pass 2 writes
every row: ``tokens`` = the row's distinct in-vocabulary words (first-appearance order),
``token_weights`` = their TF-IDF (sublinear tf x ln((1 + N) / (1 + df)) + 1, rows L2-normalised)
and ``text`` = the raw text (for pretrained text towers). Tokenizer: lower case, runs of letters
and digits. Writes ``vocab.txt`` (line i = word of token i) and, for names, ``label_names.txt``.
Bad input stops with one line naming the file, row (0-based data row) and column; nothing is
left behind (temp directory renamed when complete).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from xclass.data.schema import DataError
from xclass.errors import one_line
from xclass.importers.inputs import text_lines
from xclass.importers.xmc_dataset import write_xmc_dataset

WORD = re.compile(r"[^\W_]+", re.UNICODE)
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def tokenize(text: str) -> List[str]:
    """Lower-cased runs of letters and digits."""
    return WORD.findall(text.lower())


def file_format(path: str) -> str:
    name = path.lower()[:-3] if path.lower().endswith(".gz") else path.lower()
    ext = os.path.splitext(name)[1]
    if ext not in FORMATS:
        raise DataError(f"unknown file type {ext!r} (expected {', '.join(FORMATS)}, optionally .gz)", file=path)
    if not os.path.isfile(path):
        raise DataError("file not found", file=path)
    return FORMATS[ext]


def read_records(path: str, columns: List[str]) -> Iterator[Tuple[int, List[Any]]]:
    """(0-based data row, [value of each column]) of every row; missing column -> DataError."""
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        import pyarrow as pa

        row = 0
        try:
            pf = pq.ParquetFile(path)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"no such column (columns: {pf.schema_arrow.names})", file=path, column=missing[0])
            for rb in pf.iter_batches(batch_size=8192, columns=columns):
                vals = [rb.column(i).to_pylist() for i in range(len(columns))]
                for j in range(rb.num_rows):
                    yield row, [v[j] for v in vals]
                    row += 1
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read the Parquet data after row {row} ({exc})", file=path) from None
        return
    lines = text_lines(path)
    if fmt == "jsonl":
        row = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON ({exc.msg})", file=path, row=row) from None
            if not isinstance(obj, dict):
                raise DataError("expected one JSON object per line", file=path, row=row)
            for c in columns:
                if c not in obj:
                    raise DataError(f"missing (keys: {sorted(obj)})", file=path, row=row, column=c)
            yield row, [obj[c] for c in columns]
            row += 1
        return
    reader = csv.reader(lines, delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, [])
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"no such column in the header (columns: {header})", file=path, column=missing[0])
    pos = [header.index(c) for c in columns]
    for row, rec in enumerate(reader):
        if len(rec) != len(header):
            raise DataError(f"{len(rec)} fields, the header has {len(header)}", file=path, row=row)
        yield row, [rec[p] for p in pos]


class LabelSpace:
    """Label names or ids -> ids in [0, num_labels). ``fixed``: names/ids must be known."""

    def __init__(self, ids: bool, sep: str, names: Optional[List[str]] = None, num: Optional[int] = None):
        self.ids, self.sep = ids, sep
        self.names: List[str] = list(names or [])
        self.index: Dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.fixed = names is not None or num is not None
        self.num = num if num is not None else len(self.names)

    def parse(self, cell: Any, path: str, row: int, column: str) -> List[int]:
        items = self._items(cell, path, row, column)
        out = []
        for it in items:
            out.append(self._id(it, path, row, column) if self.ids else self._name(it, path, row, column))
        return sorted(set(out))

    def _items(self, cell: Any, path: str, row: int, column: str) -> List[Any]:
        if cell is None:
            raise DataError("label list is null", file=path, row=row, column=column)
        if isinstance(cell, str):
            s = cell.strip()
            if s.startswith("["):
                try:
                    cell = json.loads(s)
                except json.JSONDecodeError:
                    raise DataError(f"label cell starts with '[' but is not a JSON list: {s[:40]!r}",
                                    file=path, row=row, column=column) from None
            else:
                return [t.strip() for t in s.split(self.sep) if t.strip()]
        if isinstance(cell, (int, np.integer)) and not isinstance(cell, bool):
            return [int(cell)]
        if not isinstance(cell, (list, tuple)):
            raise DataError(f"expected a list of labels, got {type(cell).__name__}", file=path, row=row, column=column)
        return list(cell)

    def _id(self, it: Any, path: str, row: int, column: str) -> int:
        if isinstance(it, str) and it.strip().isdigit():
            it = int(it)
        if not isinstance(it, (int, np.integer)) or isinstance(it, bool) or it < 0:
            raise DataError(f"label {it!r} is not a non-negative integer id (--label-ids)", file=path, row=row,
                            column=column)
        if self.fixed and it >= self.num:
            raise DataError(f"label id {it} >= number of labels {self.num}", file=path, row=row, column=column)
        self.num = max(self.num, int(it) + 1)
        return int(it)

    def _name(self, it: Any, path: str, row: int, column: str) -> int:
        if not isinstance(it, (str, int)) or isinstance(it, bool):
            raise DataError(f"label {it!r} is not a name", file=path, row=row, column=column)
        name = str(it)
        if name not in self.index:
            if self.fixed:
                raise DataError(f"label {name!r} is not in the label file", file=path, row=row, column=column)
            self.index[name] = len(self.names)
            self.names.append(name)
            self.num = len(self.names)
        return self.index[name]


def read_label_file(path: str, ids: bool, id_col: str, text_col: str) -> Tuple[List[Any], List[str]]:
    """(labels in file order: names, or ids when ``ids``; their texts) of a label file."""
    if path.lower().endswith(".txt"):  # line i: text of label i (ids) / name and text (names)
        texts = [t.rstrip("\r\n") for t in text_lines(path)]
        keys: List[Any] = list(range(len(texts))) if ids else list(texts)
    else:
        keys, texts = [], []
        for row, (key, text) in read_records(path, [id_col, text_col]):
            if key is None or (ids and not str(key).strip().isdigit()):
                raise DataError(f"bad label {key!r}", file=path, row=row, column=id_col)
            keys.append(int(key) if ids else str(key))
            texts.append("" if text is None else str(text))
    if len(set(keys)) != len(keys):
        dup = next(k for k, c in Counter(keys).items() if c > 1)
        raise DataError(f"label {dup!r} appears twice", file=path, column=id_col)
    return keys, texts


def _text(val: Any, path: str, row: int, column: str) -> str:
    if val is None:
        raise DataError("text is null", file=path, row=row, column=column)
    return str(val)


class Vocab:
    """Words with document frequency >= min_df (most frequent first, at most ``max_size``)."""

    def __init__(self, df: Counter, n_docs: int, min_df: int, max_size: int) -> None:
        words = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))
        self.words = words[:max_size] if max_size > 0 else words
        self.id = {w: i for i, w in enumerate(self.words)}
        self.idf = np.array([math.log((1 + n_docs) / (1 + df[w])) + 1 for w in self.words], np.float64)

    def encode(self, text: str) -> Tuple[List[int], List[float]]:
        """(distinct token ids in first-appearance order, L2-normalised TF-IDF weights)."""
        tf = Counter(self.id[w] for w in tokenize(text) if w in self.id)
        toks = list(tf)
        w = np.array([(1 + math.log(tf[t])) * self.idf[t] for t in toks])
        norm = float(np.sqrt((w * w).sum())) if len(w) else 1.0
        return toks, (w / max(norm, 1e-12)).astype(np.float32).tolist()


def import_text(out_dir: str, train: str, test: str, *, text_column: str = "text",
                labels_column: str = "labels", label_ids: bool = False, label_sep: str = "|",
                label_file: Optional[str] = None, label_file_column: str = "label",
                label_text_column: str = "text", min_df: int = 1, max_vocab: int = 0,
                overwrite: bool = False, progress: bool = True, seed: int = 0) -> Dict:
    """Import ``train``/``test`` into ``out_dir`` (see the module doc); returns meta.json's dict."""
    if min_df < 1 or max_vocab < 0:
        raise DataError(f"need --min-df >= 1 and --max-vocab >= 0 (0 = all words), got {min_df} and {max_vocab}")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    cols = [text_column, labels_column]
    label_texts: Optional[List[str]] = None
    if label_file:
        keys, label_texts = read_label_file(label_file, label_ids, label_file_column, label_text_column)
        space = LabelSpace(label_ids, label_sep, None if label_ids else keys,
                           (max(keys) + 1 if keys else 0) if label_ids else None)
        if label_ids:
            by_id = [""] * space.num
            for k, t in zip(keys, label_texts):
                by_id[k] = t
            label_texts = by_id
    else:
        space = LabelSpace(label_ids, label_sep)
    df: Counter = Counter()
    n_rows = {"train": 0, "test": 0}
    for split, path in (("train", train), ("test", test)):
        for row, (text, cell) in read_records(path, cols):
            space.parse(cell, path, row, labels_column)
            if split == "train":
                df.update(set(tokenize(_text(text, path, row, text_column))))
            n_rows[split] += 1
    vocab = Vocab(df, n_rows["train"], min_df, max_vocab)

    def rows(path: str):
        for row, (text, cell) in read_records(path, cols):
            toks, wts = vocab.encode(_text(text, path, row, text_column))
            yield space.parse(cell, path, row, labels_column), toks, wts, text

    texts = label_texts if label_texts is not None else (space.names if not label_ids else [""] * space.num)
    files = {"vocab.txt": vocab.words}
    if not label_ids:
        files["label_names.txt"] = space.names
    src = {"format": "text", "train": os.path.abspath(train), "test": os.path.abspath(test),
           "text_column": text_column, "labels_column": labels_column,
           "labels": "ids" if label_ids else "names", "label_file": os.path.abspath(label_file) if label_file else None,
           "tokenizer": "lower-case runs of letters and digits", "min_df": min_df, "max_vocab": max_vocab,
           "token_weights": "tfidf (1 + ln tf) * (ln((1 + N) / (1 + df)) + 1), L2 rows"}
    return write_xmc_dataset(out_dir, {"train": rows(train), "test": rows(test)}, num_labels=space.num,
                             vocab_size=len(vocab.words), label_text=texts,
                             label_tokens=[vocab.encode(t)[0] for t in texts], totals=n_rows, source=src,
                             overwrite=overwrite, progress=progress, with_text=True, text_files=files,
                             shuffle_seed=seed)


def add_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--train", required=True, help="train file: .jsonl/.csv/.tsv (optionally .gz) or .parquet")
    p.add_argument("--test", required=True, help="test file, same format and columns")
    p.add_argument("--text-column", default="text")
    p.add_argument("--labels-column", default="labels", help="label list: JSON/Parquet list or a "
                                                              "--label-sep separated string")
    p.add_argument("--label-ids", action="store_true", help="labels are integer ids, not names")
    p.add_argument("--label-sep", default="|", help="separator of label strings in CSV cells")
    p.add_argument("--label-file", default=None, help="label text: .txt (line i = label i) or a table")
    p.add_argument("--label-file-column", default="label", help="label name/id column of --label-file")
    p.add_argument("--label-text-column", default="text", help="text column of --label-file")
    p.add_argument("--min-df", type=int, default=1, help="keep words in at least this many train texts")
    p.add_argument("--max-vocab", type=int, default=0, help="keep the most frequent words only (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="order of the stored train rows (ids keep the input order)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def run_import_text(a: argparse.Namespace) -> int:
    """CLI entry: one JSON summary line, or one error line and exit code 2."""
    try:
        meta = import_text(a.out, a.train, a.test, text_column=a.text_column, labels_column=a.labels_column,
                           label_ids=a.label_ids, label_sep=a.label_sep, label_file=a.label_file,
                           label_file_column=a.label_file_column, label_text_column=a.label_text_column,
                           min_df=a.min_df, max_vocab=a.max_vocab, overwrite=a.overwrite,
                           progress=not a.no_progress, seed=a.seed)
    except (DataError, FileExistsError) as exc:
        if os.environ.get("XCLASS_DEBUG"):
            raise
        print(f"xclass import text: {one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({"out": os.path.abspath(a.out), "num_classes": meta["num_classes"],
                      "vocab_size": meta["inputs"]["tokens"]["vocab_size"],
                      "rows": {k: v["rows"] for k, v in meta["splits"].items()}}))
    return 0
