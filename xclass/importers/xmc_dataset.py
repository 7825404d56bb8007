"""Write an XMC dataset directory (the ``xclass make-data --task xmc`` layout) from row
iterators: used by the XC-repository importer and the WordNet importer.

Layout: ``train.parquet``, ``test.parquet`` (``id``, ``labels`` list<int64>, ``tokens``
list<int32>, ``token_weights`` list<float32>, and ``text`` string when the rows carry their raw
text), ``labels.parquet`` (``label_id``, ``text``,
``tokens``, ``train_count``), ``meta.json`` (task, schema_version, num_classes, inputs.tokens
.vocab_size/pad_id/weights, splits with files/rows/id_range/label_range, labels, source).
``pad_id`` = vocab_size: the encoders pad with a dedicated row, every id below it is a token. Row ids are unique
across splits (train first) and follow the input order. The train split is then written in a
seeded random order (``shuffle_seed``; the ids travel with their rows, so they do not depend on
the order): the streaming reader shuffles only within windows of row groups, so sorted input
(WordNet: nouns then verbs) would otherwise train one kind of row after the other. The shuffle
is external (bounded memory): rows go to ``ceil(n / CHUNK)`` random buckets on disk, each bucket
is permuted in memory and appended; that is a uniform random permutation. Written into a temp
directory and renamed when complete.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from xclass.data.schema import SCHEMA_VERSION
from xclass.data.writer import PartWriter, atomic_dir, var_list, with_task_meta, write_json

Row = Tuple  # (labels, token ids, token weights) or (labels, token ids, token weights, raw text)
CHUNK = 65536


def row_schema(vocab_size: int, with_text: bool = False) -> pa.Schema:
    s = pa.schema([("id", pa.int64()), ("labels", pa.list_(pa.int64())), ("tokens", pa.list_(pa.int32())),
                   ("token_weights", pa.list_(pa.float32()))] + ([("text", pa.string())] if with_text else []))
    return with_task_meta(s, "xmc", vocab_size=vocab_size)


def _csr(lists: List[Sequence], dtype) -> Tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(x) for x in lists), np.int64, len(lists))
    off = np.concatenate([[0], np.cumsum(lens)])
    vals = np.fromiter((v for x in lists for v in x), dtype, int(off[-1]))
    return vals, off


def _flush(w: PartWriter, ids: List[int], buf: List[Row]) -> None:
    lab, lo = _csr([r[0] for r in buf], np.int64)
    tok, to = _csr([r[1] for r in buf], np.int32)
    wt, _ = _csr([r[2] for r in buf], np.float32)
    cols = {"id": pa.array(np.asarray(ids, np.int64)), "labels": var_list(lab, lo, pa.int64()),
            "tokens": var_list(tok, to, pa.int32()), "token_weights": var_list(wt, to, pa.float32())}
    if w.schema.get_field_index("text") >= 0:
        cols["text"] = pa.array([r[3] for r in buf], pa.string())
    w.write(cols)


def _write_split(tmp: str, name: str, rows: Iterable[Row], id0: int, vocab: int, num_labels: int,
                 counts: Optional[np.ndarray], total: Optional[int], progress: bool, with_text: bool,
                 shuffle_seed: Optional[int] = None) -> Dict:
    """Rows -> ``tmp/name.parquet`` (ids from ``id0`` in input order); with ``shuffle_seed`` the
    file holds them in that seed's random order (:func:`shuffle_parquet`)."""
    final = os.path.join(tmp, f"{name}.parquet")
    schema = row_schema(vocab, with_text)
    w = PartWriter(final if shuffle_seed is None else final + ".in-order", schema, row_group_rows=CHUNK)
    buf: List[Row] = []
    n = 0
    with tqdm(total=total, desc=f"import {name}", unit="rows", disable=not progress, file=sys.stderr) as bar:
        for r in rows:
            buf.append(r)
            if counts is not None and len(r[0]):
                np.add.at(counts, np.asarray(r[0], np.int64), 1)
            if len(buf) == CHUNK:
                _flush(w, list(range(id0 + n, id0 + n + len(buf))), buf)
                n += len(buf)
                bar.update(len(buf))
                buf = []
        if buf:
            _flush(w, list(range(id0 + n, id0 + n + len(buf))), buf)
            n += len(buf)
            bar.update(len(buf))
    w.close()
    if shuffle_seed is not None:
        shuffle_parquet(final + ".in-order", final, schema, shuffle_seed)
    return {"files": [f"{name}.parquet"], "rows": n, "id_range": [id0, id0 + n], "label_range": [0, num_labels]}


def shuffle_parquet(src: str, dst: str, schema: pa.Schema, seed: int, bucket_rows: int = CHUNK) -> int:
    """Write the rows of ``src`` to ``dst`` in a uniform random order drawn from ``seed``; memory
    holds one input row group and one bucket (about ``bucket_rows`` rows) at a time. -> rows."""
    f = pq.ParquetFile(src)
    n = f.metadata.num_rows
    n_buckets = max(1, -(-n // bucket_rows))
    rng = np.random.default_rng(seed)
    tmp = os.path.dirname(os.path.abspath(dst))
    paths = [os.path.join(tmp, f".bucket-{b:05d}.parquet") for b in range(n_buckets)]
    writers = [pq.ParquetWriter(q, schema) for q in paths]
    for batch in f.iter_batches(batch_size=bucket_rows):
        where = rng.integers(0, n_buckets, batch.num_rows)
        for b in range(n_buckets):
            writers[b].write_batch(batch.filter(pa.array(where == b)))
    for w in writers:
        w.close()
    out = PartWriter(dst, schema, row_group_rows=CHUNK)
    for q in paths:
        t = pq.read_table(q, schema=schema)
        if t.num_rows:
            t = t.take(pa.array(rng.permutation(t.num_rows)))
            out.write({c: t.column(c).combine_chunks() for c in schema.names})
        os.remove(q)
    out.close()
    os.remove(src)
    return n


def _write_labels(tmp: str, num_labels: int, vocab: int, counts: np.ndarray,
                  text: Optional[Sequence[str]], tokens: Optional[Sequence[Sequence[int]]]) -> None:
    s = with_task_meta(pa.schema([("label_id", pa.int64()), ("text", pa.string()),
                                  ("tokens", pa.list_(pa.int32())), ("train_count", pa.int64())]),
                       "xmc_labels", vocab_size=vocab)
    tok, off = _csr(list(tokens) if tokens is not None else [[]] * num_labels, np.int32)
    w = PartWriter(os.path.join(tmp, "labels.parquet"), s, row_group_rows=CHUNK)
    w.write({"label_id": pa.array(np.arange(num_labels, dtype=np.int64)),
             "text": pa.array(list(text) if text is not None else [""] * num_labels, pa.string()),
             "tokens": var_list(tok, off, pa.int32()), "train_count": pa.array(counts)})
    w.close()


def write_xmc_dataset(out_dir: str, splits: Dict[str, Iterable[Row]], *, num_labels: int, vocab_size: int,
                      label_text: Optional[Sequence[str]] = None,
                      label_tokens: Optional[Sequence[Sequence[int]]] = None,
                      totals: Optional[Dict[str, int]] = None, source: Optional[Dict] = None,
                      overwrite: bool = False, progress: bool = True, with_text: bool = False,
                      text_files: Optional[Dict[str, Sequence[str]]] = None, shuffle_seed: Optional[int] = 0) -> Dict:
    """Write ``splits`` (name -> rows; "train" first) to ``out_dir``; returns meta.json's dict.
    ``shuffle_seed``: the train split's rows are written in this seed's random order (None: input
    order); other splits keep the input order.
    ``with_text``: rows are 4-tuples whose last item is the raw text (column ``text``).
    ``text_files``: file name -> lines (e.g. ``vocab.txt``: line i = token i), written inside too."""
    for name, seq in (("label_text", label_text), ("label_tokens", label_tokens)):
        if seq is not None and len(seq) != num_labels:
            raise ValueError(f"{name} has {len(seq)} entries, expected num_labels={num_labels}")
    counts = np.zeros(num_labels, np.int64)
    info: Dict[str, Dict] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        id0 = 0
        for name, rows in splits.items():
            info[name] = _write_split(tmp, name, rows, id0, vocab_size, num_labels,
                                      counts if name == "train" else None, (totals or {}).get(name), progress,
                                      with_text, shuffle_seed if name == "train" else None)
            if name == "train":
                info[name]["order"] = "input" if shuffle_seed is None else f"shuffled (seed {shuffle_seed})"
            id0 += info[name]["rows"]
        _write_labels(tmp, num_labels, vocab_size, counts, label_text, label_tokens)
        meta = {"task": "xmc", "schema_version": SCHEMA_VERSION,
                "seed": 0 if shuffle_seed is None else shuffle_seed, "num_classes": num_labels,
                "test_classes": 0, "inputs": {"tokens": {"vocab_size": vocab_size, "pad_id": vocab_size,
                                                       "weights": True}},
                "splits": info, "labels": {"file": "labels.parquet", "rows": num_labels,
                                           "labels_with_train_rows": int((counts > 0).sum())},
                "source": source or {}}
        write_json(os.path.join(tmp, "meta.json"), meta)
        for fname, lines in (text_files or {}).items():
            with open(os.path.join(tmp, fname), "w", encoding="utf-8") as f:
                f.write("".join(w + "\n" for w in lines))
    return meta
