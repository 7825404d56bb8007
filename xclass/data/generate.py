"""make_data: write a synthetic dataset of one task to a directory (streamed, seeded, atomic).

Layout of ``out_dir``::

    train.parquet | train/part-*.parquet   training rows (classes [0, num_classes))
    test.parquet  | test/part-*.parquet    open-set tasks: held-out classes
                                           [num_classes, num_classes + test_classes);
                                           xmc: new documents, same label space
    pairs.parquet          face:    a, b (test ids), same (bool), half positive
    trials.parquet         speaker: enroll, test (test ids), target (bool), half target
    gallery_query.parquet  quic:    id (test id), is_query (bool): per held-out class the
                                    first half of its rows is gallery, the rest queries
    labels.parquet         xmc:     label_id, text, tokens, topic, rank, train_count
    meta.json              task, schema_version, seed, counts, ranges, input shapes, files

Row ids are unique across splits (train ``[0, n_train)``, test after). Rows are written in a
class-interleaved order (a hashed bijection of row index), so a row group mixes classes.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from xclass.data.schema import SCHEMA_VERSION, TASKS
from xclass.data.synth import AffinePerm, chunk_ranges, chunk_rng
from xclass.data.writer import PartWriter, atomic_dir, write_json
from xclass.tasks import get_task, task_names


class GeneratorView:
    """The data generators named by the task records (``Task.generator``), with the
    ``names`` / ``get`` / ``build`` of a registry: a task registered later has its generator."""

    kind = "data generator"

    def names(self) -> List[str]:
        return sorted(task_names())

    def get(self, name: str) -> Any:
        return get_task(name).generator_class()

    def build(self, name: str, **kwargs: Any) -> Any:
        factory = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.kind} {name!r}: {exc}") from exc

    def __contains__(self, name: object) -> bool:
        return name in TASKS


GENERATORS = GeneratorView()

_SPLIT_TRAIN, _SPLIT_TEST, _SPLIT_PAIRS = 0, 1, 2


def _writer(tmp: str, split: str, schema: pa.Schema, gen, rows: int, opts: Dict) -> PartWriter:
    per_file = opts["rows_per_file"]
    many = per_file is not None and rows > per_file
    path = os.path.join(tmp, split if many else f"{split}.parquet")
    return PartWriter(path, schema, row_group_rows=opts["row_group_rows"] or gen.row_group_rows,
                      rows_per_file=per_file if many else None)


def _split_info(tmp: str, w: PartWriter, **extra) -> Dict:
    return {"files": [os.path.relpath(f, tmp) for f in w.files], "rows": w.rows, **extra}


def _write_classes(tmp, gen, split, code, class_lo, classes, rpc, id0, seed, opts, bar) -> Dict:
    """Rows of classes [class_lo, class_lo+classes), ``rpc`` each; row j has class perm(j)//rpc."""
    n = classes * rpc
    perm = AffinePerm(n, seed + code)
    w = _writer(tmp, split, gen.schema(), gen, n, opts)
    for ci, (lo, hi) in enumerate(chunk_ranges(n, gen.chunk_rows)):
        j = np.arange(lo, hi, dtype=np.int64)
        w.write(gen.rows(id0 + j, class_lo + perm(j) // rpc, chunk_rng(seed, code, ci)))
        bar.update(hi - lo)
    w.close()
    return _split_info(tmp, w, id_range=[id0, id0 + n], label_range=[class_lo, class_lo + classes],
                       rows_per_class=rpc)


def _write_pairs(tmp, task, classes, rpc, id0, seed, num_pairs) -> Dict:
    """Balanced verification pairs over the test split (ids), half same-class."""
    fname, (ca, cb, cs) = get_task(task).pairs.file, get_task(task).pairs.columns
    if rpc < 2 or classes < 2:
        raise ValueError(f"{fname} needs >= 2 test classes and >= 2 rows per test class, "
                         f"got {classes} classes x {rpc} rows")
    perm = AffinePerm(classes * rpc, seed + _SPLIT_TEST)
    schema = pa.schema([(ca, pa.int64()), (cb, pa.int64()), (cs, pa.bool_())])
    w = PartWriter(os.path.join(tmp, fname), schema, row_group_rows=1 << 16)
    for ci, (lo, hi) in enumerate(chunk_ranges(num_pairs, 1 << 16)):
        rng, m = chunk_rng(seed, _SPLIT_PAIRS, ci), hi - lo
        same = (np.arange(lo, hi) % 2) == 0
        c1 = rng.integers(0, classes, m)
        c2 = np.where(same, c1, (c1 + rng.integers(1, classes, m)) % classes)
        k1 = rng.integers(0, rpc, m)
        k2 = np.where(same, (k1 + rng.integers(1, rpc, m)) % rpc, rng.integers(0, rpc, m))
        a = id0 + perm.inverse(c1 * rpc + k1)
        b = id0 + perm.inverse(c2 * rpc + k2)
        w.write({ca: pa.array(a, pa.int64()), cb: pa.array(b, pa.int64()), cs: pa.array(same)})
    w.close()
    return {"file": fname, "rows": w.rows, "positives": int((num_pairs + 1) // 2)}


def _write_gallery_query(tmp, classes, rpc, id0, seed) -> Dict:
    """quic: the first ``max(1, rpc // 2)`` rows of each held-out class form the gallery."""
    n, g = classes * rpc, max(1, rpc // 2)
    perm = AffinePerm(n, seed + _SPLIT_TEST)
    schema = pa.schema([("id", pa.int64()), ("is_query", pa.bool_())])
    w = PartWriter(os.path.join(tmp, "gallery_query.parquet"), schema, row_group_rows=1 << 16)
    for lo, hi in chunk_ranges(n, 1 << 16):
        j = np.arange(lo, hi, dtype=np.int64)
        w.write({"id": pa.array(id0 + j, pa.int64()), "is_query": pa.array(perm(j) % rpc >= g)})
    w.close()
    return {"file": "gallery_query.parquet", "rows": n, "gallery_per_class": g,
            "query_per_class": rpc - g}


def _open_set(tmp, task, gen, num_classes, seed, opts, bar) -> Dict:
    rpc, t_classes, t_rpc = opts["rows_per_class"], opts["test_classes"], opts["test_rows_per_class"]
    train = _write_classes(tmp, gen, "train", _SPLIT_TRAIN, 0, num_classes, rpc, 0, seed, opts, bar)
    id0 = train["rows"]
    test = _write_classes(tmp, gen, "test", _SPLIT_TEST, num_classes, t_classes, t_rpc, id0, seed, opts, bar)
    out = {"splits": {"train": train, "test": test}}
    pairs = get_task(task).pairs
    if pairs is not None:
        num_pairs = opts["num_pairs"] or 2 * min(3000, t_classes * t_rpc)
        out[pairs.meta_key] = _write_pairs(tmp, task, t_classes, t_rpc, id0, seed, num_pairs)
    else:
        out["gallery_query"] = _write_gallery_query(tmp, t_classes, t_rpc, id0, seed)
    return out


def _xmc(tmp, gen, num_classes, seed, opts, bar) -> Dict:
    counts = np.zeros(num_classes, dtype=np.int64)
    splits, id0 = {}, 0
    for split, code, n in (("train", _SPLIT_TRAIN, opts["num_rows"]), ("test", _SPLIT_TEST, opts["num_test_rows"])):
        w = _writer(tmp, split, gen.schema(), gen, n, opts)
        for ci, (lo, hi) in enumerate(chunk_ranges(n, gen.chunk_rows)):
            ids = np.arange(id0 + lo, id0 + hi, dtype=np.int64)
            w.write(gen.rows(ids, chunk_rng(seed, code, ci), counts if split == "train" else None))
            bar.update(hi - lo)
        w.close()
        splits[split] = _split_info(tmp, w, id_range=[id0, id0 + n], label_range=[0, num_classes])
        id0 += n
    w = PartWriter(os.path.join(tmp, "labels.parquet"), gen.label_schema(), row_group_rows=1 << 16)
    for lo, hi in chunk_ranges(num_classes, 1 << 16):
        w.write(gen.label_rows(np.arange(lo, hi, dtype=np.int64), counts))
    w.close()
    return {"splits": splits, "labels": {"file": "labels.parquet", "rows": num_classes,
                                         "labels_with_train_rows": int((counts > 0).sum())}}


def _resolve_counts(task: str, num_classes: int, o: Dict) -> Dict:
    """Fill defaults: open-set tasks count rows per class, xmc counts documents. A count given
    below its minimum (``num_pairs`` >= 0, the others >= 1) is a ValueError naming it."""
    for key, v in o.items():
        low = 0 if key == "num_pairs" else 1
        if v is not None and v < low:
            raise ValueError(f"{key} must be >= {low}, got {v}")
    if get_task(task).multi_label:
        o["num_rows"] = o["num_rows"] or 10 * num_classes
        o["num_test_rows"] = o["num_test_rows"] or max(100, o["num_rows"] // 5)
        return o
    if o["rows_per_class"] is None:
        o["rows_per_class"] = max(1, o["num_rows"] // num_classes) if o["num_rows"] else 20
    o["test_classes"] = o["test_classes"] or max(2, min(1000, num_classes // 5))
    o["test_rows_per_class"] = o["test_rows_per_class"] or max(2, min(o["rows_per_class"], 10))
    return o


def make_data(task: str, out_dir: str, num_classes: int, *, rows_per_class: Optional[int] = None,
              num_rows: Optional[int] = None, seed: int = 0, test_classes: Optional[int] = None,
              test_rows_per_class: Optional[int] = None, num_test_rows: Optional[int] = None,
              num_pairs: Optional[int] = None, rows_per_file: Optional[int] = None,
              row_group_rows: Optional[int] = None, overwrite: bool = False, progress: bool = True,
              **task_kwargs) -> Dict:
    """Generate a dataset of ``task`` into ``out_dir``; returns the meta.json dict.

    face/speaker/quic: ``rows_per_class`` rows for each of ``num_classes`` train classes
    (or ``num_rows // num_classes``; default 20), ``test_classes`` held-out classes with
    ``test_rows_per_class`` rows. xmc: ``num_rows`` train and ``num_test_rows`` test
    documents over ``num_classes`` labels. ``task_kwargs`` go to the task generator
    (e.g. face ``image_size``, speaker ``max_frames``, quic ``num_packets``, xmc ``vocab_size``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    multi = get_task(task).multi_label
    if multi:
        task_kwargs["num_classes"] = num_classes
    gen = GENERATORS.build(task, seed=seed, **task_kwargs)
    opts = _resolve_counts(task, num_classes, dict(
        rows_per_class=rows_per_class, num_rows=num_rows, test_classes=test_classes,
        test_rows_per_class=test_rows_per_class, num_test_rows=num_test_rows, num_pairs=num_pairs,
        rows_per_file=rows_per_file, row_group_rows=row_group_rows))
    total = (opts["num_rows"] + opts["num_test_rows"] if multi else
             num_classes * opts["rows_per_class"] + opts["test_classes"] * opts["test_rows_per_class"])
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, \
            tqdm(total=total, disable=not progress, unit="rows", desc=f"make-data {task}") as bar:
        body = (_xmc(tmp, gen, num_classes, seed, opts, bar) if multi
                else _open_set(tmp, task, gen, num_classes, seed, opts, bar))
        meta = {"task": task, "schema_version": SCHEMA_VERSION, "seed": seed,
                "num_classes": num_classes, "test_classes": opts.get("test_classes", 0) if not multi else 0,
                "inputs": gen.input_meta(),
                "generator": {k: v for k, v in vars(gen).items() if isinstance(v, (int, float, str))},
                **body}
        write_json(os.path.join(tmp, "meta.json"), meta)
    return meta
