"""Evaluation protocols over embeddings: XMC retrieval, face/speaker verification, identification
(:mod:`xclass.eval.ident_eval`, re-exported here).

Queries are streamed in chunks of ``batch_rows`` (bounded memory); per chunk the index returns
top-K ids, and only the compact :class:`~xclass.eval.metrics.Ranking` (K bools + K gains per
row) is kept, never an n x L score matrix.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple


import numpy as np

from xclass.eval.ident_eval import evaluate_identification
from xclass.eval.io import (ArraySource, Source, has_column, iter_batches, label_column, num_rows, progress_bar,
                             read_all, read_columns, read_table)
from xclass.eval.metrics import Ranking, inverse_propensity, remove_pairs, xmc_metrics
from xclass.eval.rankings import ranking_writer
from xclass.eval.scorenorm import as_norm_trials, pair_dots, unit_rows
from xclass.eval.verification import check_folds, verification_report


def propensity_from_train(train: Source, n_labels: int, a: float = 0.55, b: float = 1.5):
    """Inverse propensities [n_labels] from a training Parquet's ``labels``/``label`` column."""
    if isinstance(train, str) and os.path.isfile(train):
        counts, n = _label_counts_parquet(train, n_labels)
        return inverse_propensity(counts, n, a, b)
    counts = np.zeros(n_labels, dtype=np.int64)
    n = 0
    for batch in iter_batches(train, 1 << 18, with_labels=True):
        lab = batch.labels.indices
        if len(lab) and lab.max() >= n_labels:
            n_labels = int(lab.max()) + 1
            counts = np.pad(counts, (0, n_labels - len(counts)))
        counts += np.bincount(lab, minlength=n_labels)
        n += batch.labels.n_rows
    return inverse_propensity(counts, n, a, b)


def _label_counts_parquet(path: str, n_labels: int):
    """Label frequencies of a dataset split (``labels`` list or ``label`` column only; no
    embeddings needed), streamed by record batch."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    col = "labels" if "labels" in pf.schema_arrow.names else "label"
    if col not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no 'labels' or 'label' column for propensities")
    counts = np.zeros(n_labels, dtype=np.int64)
    n = 0
    for rb in pf.iter_batches(columns=[col], batch_size=1 << 18):
        arr = rb.column(0)
        lab = (arr.flatten() if col == "labels" else arr).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(lab) and lab.max() >= len(counts):
            counts = np.pad(counts, (0, int(lab.max()) + 1 - len(counts)))
        counts += np.bincount(lab, minlength=len(counts))
        n += rb.num_rows
    return counts, n


def read_label_counts(path: str, n_labels: int) -> np.ndarray:
    """Training label counts [n_labels] int64 from a text file (line i = count of label i) or a
    Parquet table with ``label_id`` and ``train_count`` (an XMC dataset's labels.parquet)."""
    if path.endswith(".parquet"):
        t = read_table(path)
        missing = [c for c in ("label_id", "train_count") if c not in t.column_names]
        if missing:
            raise ValueError(f"{path}: label-count table needs columns label_id, train_count (missing {missing})")
        ids = t.column("label_id").to_numpy().astype(np.int64)
        cnt = t.column("train_count").to_numpy().astype(np.int64)
    else:
        with open(path, encoding="utf-8", errors="replace") as f:   # a bad byte fails as a non-integer
            lines = f.read().split()
        bad = [i for i, x in enumerate(lines) if not x.isdigit()]
        if bad:
            raise ValueError(f"{path}: line {bad[0] + 1}: expected a non-negative integer count, got {lines[bad[0]]!r}")
        cnt = np.asarray([int(x) for x in lines], np.int64)
        ids = np.arange(len(cnt))
    if len(ids) and (ids.min() < 0 or ids.max() >= max(n_labels, len(ids))):
        raise ValueError(f"{path}: label id {int(ids.max())} outside [0, {n_labels})")
    out = np.zeros(max(n_labels, len(ids)), np.int64)
    out[ids] = cnt
    return out


def xmc_propensity(n_labels: int, train: Optional[Source] = None, label_counts: Optional[str] = None,
                   n_train: Optional[int] = None, a: float = 0.55, b: float = 1.5) -> Optional[np.ndarray]:
    """Inverse propensities [n_labels] or None: label counts from ``label_counts`` (file) or the
    ``train`` labels; N = ``n_train`` when given (e.g. the full training set's size), else the
    number of training rows (needs ``train``)."""
    if label_counts is None and train is None:
        if n_train is not None:
            raise ValueError("the propensity N needs label counts (--train-labels or --label-counts)")
        return None
    rows = None
    if label_counts is not None:
        counts = read_label_counts(label_counts, n_labels)
    else:
        counts, rows = _label_counts_parquet(train, n_labels)
    if n_train is None and rows is None and train is not None:
        rows = _label_counts_parquet(train, n_labels)[1]
    n_train = rows if n_train is None else n_train
    if n_train is None:
        raise ValueError("--label-counts needs --propensity-n (the number of training rows) or --train-labels")
    if n_train < 1:
        raise ValueError(f"propensity N must be >= 1, got {n_train}")
    return inverse_propensity(counts, int(n_train), a, b)


def read_filter(path: str) -> np.ndarray:
    """XC-repository filter file: whitespace separated ``row label`` pairs -> [m, 2] int64."""
    try:
        arr = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: expected 'row label' integer pairs per line ({exc})") from exc
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.shape[1] != 2:
        raise ValueError(f"{path}: expected 2 columns (row label), found {arr.shape[1]}")
    return arr


class _LabelSpace:
    """Checks that query label ids are ids the index holds (exactly for id-mapped shards,
    by the manifest's per-shard id ranges otherwise)."""

    def __init__(self, index, queries: Source):
        self.where, self.path = _name(queries), getattr(index, "path", "index")
        self.known = index.label_ids() if hasattr(index, "label_ids") else None
        self.ranges = index.id_ranges() if hasattr(index, "id_ranges") else None

    def __call__(self, b) -> None:
        lab = b.labels.indices
        if not len(lab) or (self.known is None and self.ranges is None):
            return
        if self.known is not None:
            pos = np.clip(np.searchsorted(self.known, lab), 0, max(len(self.known) - 1, 0))
            bad = (self.known[pos] != lab) if len(self.known) else np.ones(len(lab), bool)
            held = f"{len(self.known)} ids"
        else:
            r = self.ranges
            bad = ~((lab[:, None] >= r[:, 0]) & (lab[:, None] <= r[:, 1])).any(axis=1)
            held = f"ids in {r.tolist()}"
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            row = b.offset + int(np.searchsorted(b.labels.indptr, j, side="right") - 1)
            raise ValueError(
                f"{self.where}: row {row} has label id {int(lab[j])}, which the index "
                f"{self.path} does not hold ({held}); do queries and index share one label "
                "space? (--allow-unindexed-labels scores such labels as misses)")


def evaluate_xmc(index, queries: Source, ks: Sequence[int] = (1, 3, 5), *,
                 inv_prop: Optional[np.ndarray] = None, filter_pairs: Optional[np.ndarray] = None,
                 batch_rows: int = 4096, empty_rows: str = "keep", progress: bool = True,
                 check_labels: bool = True, rankings_out: Optional[str] = None) -> dict:
    """XMC metrics of ``queries`` (with ``labels``/``label``) retrieved from ``index``
    (a :class:`~xclass.eval.searcher.ShardedIndex` or anything with ``search(q, k)``).
    ``check_labels``: refuse query label ids the index does not hold (a label-space mismatch
    would otherwise silently score as misses). ``rankings_out``: also write the rankings as
    Parquet (``id`` query id, ``labels`` top-K label ids best first, ``scores`` their scores;
    -1 / -inf pads), written to a temp file and renamed when complete."""
    if empty_rows not in ("keep", "drop"):
        raise ValueError(f"empty_rows must be 'keep' or 'drop', got {empty_rows!r}")
    K = max(ks)
    extra = 0
    if filter_pairs is not None and len(filter_pairs):
        extra = int(np.bincount(filter_pairs[:, 0]).max())   # widest filtered row
    if inv_prop is not None:
        hi = max(index.manifest["shards"][-1]["id_max"] if hasattr(index, "manifest") else 0, 0)
        if len(inv_prop) <= hi:      # labels never seen in training: count 0
            raise ValueError(f"inverse propensities cover {len(inv_prop)} labels, index ids reach {hi}")
    parts, bar = [], progress_bar(num_rows(queries), "xmc eval", progress)
    check = _LabelSpace(index, queries) if check_labels else None
    with ranking_writer(rankings_out, K) as writer:
        for b in iter_batches(queries, batch_rows, with_labels=True):
            if check is not None:
                check(b)
            D, I = index.search(b.emb, K + extra)
            if extra:
                sel = (filter_pairs[:, 0] >= b.offset) & (filter_pairs[:, 0] < b.offset + len(b.ids))
                pairs = filter_pairs[sel] - np.array([b.offset, 0])
                I, D = remove_pairs(I, D, pairs, K)
            parts.append(Ranking.build(I[:, :K], b.labels, inv_prop))
            if writer is not None:
                writer.write(b.ids, I[:, :K], D[:, :K])
            if bar is not None:
                bar.update(len(b.ids))
    if bar is not None:
        bar.close()
    r = Ranking.concat(parts)
    n_empty = int((r.n_true == 0).sum())
    if empty_rows == "drop":
        r = r.drop_empty()
    out = xmc_metrics(r, ks)
    out.update({"n_queries": int(len(r.n_true)), "n_empty_rows": n_empty})
    return out


def _name(src: Source) -> str:
    return src.name if isinstance(src, ArraySource) else str(src)


def _rows_of(ids: np.ndarray, wanted: np.ndarray, what: str, where: str) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], wanted)
    pos = np.clip(pos, 0, len(ids) - 1)
    bad = ids[order][pos] != wanted
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {what} row {i} refers to id {int(wanted[i])}, "
                         "not present in the embedding file")
    return order[pos]


def pair_scores(emb: Source, a: np.ndarray, b: np.ndarray, where: str = "pairs",
                cohort: Optional[Source] = None, asnorm_top: int = 300) -> np.ndarray:
    """Cosine similarity of embedding pairs given by ids ``a``, ``b`` [m]; with a ``cohort``
    embedding file, AS-norm scores over its ``asnorm_top`` closest members per side
    (:mod:`xclass.eval.scorenorm`)."""
    data = read_all(emb)
    x = unit_rows(data.emb)
    ra = _rows_of(data.ids, np.asarray(a, np.int64), "column 'a'/'enroll'", where)
    rb = _rows_of(data.ids, np.asarray(b, np.int64), "column 'b'/'test'", where)
    if cohort is None:
        return pair_dots(x, ra, rb)
    c = read_all(cohort).emb
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"{_name(cohort)}: cohort embedding dimension {c.shape[1]} != "
                         f"{x.shape[1]} in {_name(emb)}")
    if not 1 <= asnorm_top <= len(c):
        raise ValueError(f"{_name(cohort)}: AS-norm top-N {asnorm_top} must be in "
                         f"[1, {len(c)}] (the cohort size)")
    return as_norm_trials(x, ra, rb, unit_rows(c), asnorm_top)


def evaluate_verification(emb: Source, pairs: str, protocol: str = "face", *,
                          cohort: Optional[Source] = None,
                          asnorm_top: int = 300) -> Tuple[dict, dict]:
    """Face (pairs file ``a, b, same``) or speaker (trials ``enroll, test, target``).
    ``cohort``: embedding file for AS-norm (scores then are AS-normalised cosines).
    Returns (metrics, curves) where curves holds the raw ``scores`` and ``target`` and the pairs'
    row ids ``a`` and ``b``."""
    from xclass.tasks.base import pair_file

    cols = pair_file(protocol).columns
    a, b, t = read_columns(pairs, cols, ("int", "int", "bool"))
    folds = None
    if protocol == "face" and has_column(pairs, "fold"):   # a published protocol's folds (LFW)
        try:
            folds = check_folds(read_columns(pairs, ("fold",), ("int",))[0], len(t))
        except ValueError as exc:
            raise ValueError(f"{pairs}: column 'fold': {exc}") from None
    s = pair_scores(emb, a, b, where=str(pairs), cohort=cohort, asnorm_top=asnorm_top)
    return verification_report(s, t, protocol, folds=folds), {"scores": s, "target": t, "a": a, "b": b}


def evaluate_templates(emb: Source, templates: str, pairs: str, file_map: str) -> Tuple[dict, dict]:
    """Template verification (IJB-B / IJB-C; :mod:`xclass.eval.templates`): image embeddings named
    through the dataset's ``file_map`` (files.parquet), pooled per template, pairs of templates
    scored by cosine. Returns (metrics, curves) as :func:`evaluate_verification` (``a``, ``b``:
    template ids)."""
    from xclass.eval.hardest import read_file_map
    from xclass.eval.templates import (image_rows, read_template_pairs, read_templates, template_embeddings,
                                       template_scores)

    names, tids, mids = read_templates(templates)
    a, b, same = read_template_pairs(pairs)
    by_path = {p: i for i, p in read_file_map(file_map).items()}
    data = read_all(emb)
    t_ids, feats = template_embeddings(data.emb[image_rows(names, by_path, data.ids, templates)], tids, mids)
    s = template_scores(t_ids, feats, a, b, pairs)
    return verification_report(s, same, "face"), {"scores": s, "target": same, "a": a, "b": b}


__all__ = ["evaluate_xmc", "evaluate_verification", "evaluate_templates", "evaluate_identification",
           "propensity_from_train", "read_filter", "pair_scores", "label_column"]
