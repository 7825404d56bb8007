"""Datasets derived for ``tools/bench_tasks.py``: a validation split made of the training rows only
(recipe choices never read the real test rows) and a copy trained on fewer labels (how the
open-set result grows with the number of labels trained on). Each is written as a dataset
directory of its own: train.parquet, test.parquet, meta.json (and gallery_query.parquet when the
source has one and it still applies)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclass.data.meta import load_meta, split_files


def _read(data: str, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in split_files(data, split)])


def _relabel(t: pa.Table, new_id: np.ndarray) -> pa.Table:
    labels = np.asarray(t["label"])
    return t.set_column(t.schema.get_field_index("label"), "label", pa.array(new_id[labels], pa.int64()))


def _write(path: str, meta: Dict, tables: Dict[str, pa.Table], names: List[str], source: Dict) -> str:
    """The dataset at ``path`` (replaced): one Parquet file per split, meta.json with the split
    summaries, ``names`` as class names and ``source`` added to meta's source."""
    from xclass.importers.common import split_info

    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    meta = {**meta, "splits": {}, "class_names": names, "source": {**meta.get("source", {}), **source}}
    for split, t in tables.items():
        pq.write_table(t, os.path.join(path, f"{split}.parquet"))
        meta["splits"][split] = split_info(split, np.asarray(t["id"]), np.asarray(t["label"]))
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def validation_data(data: str, fraction: float, seed: int, out: str, classes: int = 0) -> str:
    """A dataset made of the TRAINING split only, so recipe choices never see the real test rows.
    Closed set (``classes`` = 0): ``fraction`` of each class's training rows (seeded, stratified)
    become its test split. Open set (``classes`` = K > 0): the rows of K seeded training classes
    become the test split, relabelled after the remaining classes (which are renumbered 0..C'-1),
    and are split half/half into gallery and queries by the benchmark. Written under ``out``."""
    from xclass.eval.split import query_mask

    meta = load_meta(data)
    t = _read(data, "train")
    ids, labels = np.asarray(t["id"]), np.asarray(t["label"])
    names = meta["class_names"][:int(meta["num_classes"])]
    if classes:
        held = np.random.default_rng(seed).permutation(np.unique(labels))[:classes]
        is_test = np.isin(labels, held)
        order = [c for c in range(len(names)) if c not in set(held.tolist())] + sorted(held.tolist())
        new_id = np.empty(len(names), np.int64)
        new_id[order] = np.arange(len(order))
        t = _relabel(t, new_id)
        names, meta["num_classes"], meta["test_classes"] = [names[c] for c in order], len(names) - classes, classes
    else:
        is_test = query_mask(ids, labels, fraction, seed)
        meta["test_classes"] = 0
    meta.pop("gallery_query", None)
    tables = {"train": t.filter(pa.array(~is_test)), "test": t.filter(pa.array(is_test))}
    return _write(os.path.join(out, "validation_data"), meta, tables, names,
                  {"validation_of": os.path.abspath(data), "validation_fraction": fraction,
                   "validation_classes": classes, "validation_seed": seed})


def fewer_labels(data: str, keep: int, seed: int, out: str) -> str:
    """A copy of the dataset trained on ``keep`` of its training classes (a seeded choice): the
    other classes' training rows and closed-set test rows are left out, the kept classes are
    renumbered 0..keep-1 (in their old order) and the held-out (open-set) classes follow,
    unchanged in their order. The gallery/query file, if any, keeps the rows that remain.
    Written under ``out``."""
    meta = load_meta(data)
    c = int(meta["num_classes"])
    if not 1 <= keep <= c:
        raise ValueError(f"--train-labels must be in [1, {c}] (the training classes), got {keep}")
    kept = np.sort(np.random.default_rng(seed).permutation(c)[:keep])
    n_all = len(meta["class_names"])
    new_id = np.full(n_all, -1, np.int64)
    new_id[kept] = np.arange(keep)
    new_id[c:] = keep + np.arange(n_all - c)
    tables = {}
    for split in meta["splits"]:
        t = _read(data, split)
        t = t.filter(pa.array(new_id[np.asarray(t["label"])] >= 0))
        tables[split] = _relabel(t, new_id)
    names = [meta["class_names"][i] for i in kept] + meta["class_names"][c:]
    gq_path, gq = os.path.join(data, "gallery_query.parquet"), None
    meta = {**meta, "num_classes": keep}
    if meta.get("gallery_query") and os.path.exists(gq_path):
        left = np.concatenate([np.asarray(t["id"]) for t in tables.values()])
        gq = pq.read_table(gq_path)
        gq = gq.filter(pa.array(np.isin(np.asarray(gq["id"]), left)))
        meta["gallery_query"] = {**meta["gallery_query"], "rows": gq.num_rows,
                                 "queries": int(np.asarray(gq["is_query"]).sum())}
    else:
        meta.pop("gallery_query", None)
    path = _write(os.path.join(out, "fewer_labels_data"), meta, tables, names,
                  {"fewer_labels_of": os.path.abspath(data), "train_labels": keep, "train_labels_seed": seed})
    if gq is not None:
        pq.write_table(gq, os.path.join(path, "gallery_query.parquet"))
    return path
