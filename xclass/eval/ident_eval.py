"""Identification against an exported index (``xclass evaluate --protocol ident``): each query's
K nearest indexed rows, labelled from the gallery file, scored by
:func:`xclass.eval.identification.identification_report` (kNN accuracy, CMC, majority vote) and,
when some queries belong to no gallery class, :func:`xclass.eval.open_set.open_set_report`, with
the 1-NN similarity or (``softmax_scale``) :func:`softmax_share` as the open-set score."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from xclass.eval.identification import identification_report
from xclass.eval.open_set import dir_fpir_curve, open_set_report
from xclass.eval.io import Source, expand_sources, iter_batches, num_rows, progress_bar
from xclass.eval.rankings import ranking_writer


def evaluate_identification(index, gallery: Source, queries: Source, ks=(1, 5, 10),
                            majority_k: int = 5, batch_rows: int = 4096,
                            progress: bool = True, rankings_out: Optional[str] = None,
                            errors_out: Optional[list] = None, n_errors: int = 20,
                            softmax_scale: Optional[float] = None, curve_out: Optional[dict] = None,
                            ensemble_dims: Optional[Sequence[int]] = None) -> dict:
    """kNN / rank-k identification: gallery labels come from the gallery Parquet's ``label``
    (``gallery``: a file, or a directory or glob of files, as ``export-index --head`` writes one per rank).
    ``rankings_out``: also write, per query, the labels of its K nearest gallery rows and their
    scores (:mod:`xclass.eval.rankings`; ``labels[0]`` is the 1-NN prediction). ``errors_out``: a
    list that receives the ``n_errors`` highest-scoring wrong 1-NN answers (query id and label,
    the nearest gallery row's id and label, its score). ``softmax_scale``: the open-set metrics
    score a query by :func:`softmax_share` of its K nearest rows instead of its 1-NN similarity
    (cosine and inner-product indexes only). ``curve_out``: a dict that receives the open-set
    curve (``fpir``, ``dir``: :func:`xclass.eval.open_set.dir_fpir_curve`) when some queries are
    non-mated and some mated. ``ensemble_dims`` (with ``softmax_scale``; queries and gallery fused
    from runs of these dimensions, :mod:`xclass.eval.ensemble`): the open-set score is the mean of
    the runs' own softmax shares (:func:`~xclass.eval.ensemble.mean_prob_share`, a deep ensemble)."""
    g_ids, g_lab, g_emb = _read_gallery(gallery, with_emb=bool(ensemble_dims and softmax_scale))
    if g_emb is not None and g_emb.shape[1] != sum(ensemble_dims):
        raise ValueError(f"{gallery}: vectors of dimension {g_emb.shape[1]}, but fused from runs of {list(ensemble_dims)}")
    K = max(max(ks), majority_k)
    nl, ql, sc, qid, nid, mean_prob = [], [], [], [], [], []
    bar = progress_bar(num_rows(queries), "identification", progress)
    with ranking_writer(rankings_out, K) as writer:
        for b in iter_batches(queries, batch_rows, with_labels=True):
            D, I = index.search(b.emb, K)
            pos = _gallery_positions(I, g_ids, gallery, b.offset)
            nl.append(np.where(I >= 0, g_lab[pos], -1))
            ql.append(b.labels.indices[b.labels.indptr[:-1]])
            sc.append(D)
            qid.append(b.ids)
            nid.append(I[:, 0])
            if g_emb is not None:
                mean_prob.append(_mean_prob(b.emb, I, pos, g_emb, nl[-1], ensemble_dims, softmax_scale))
            if writer is not None:
                writer.write(b.ids, nl[-1], D)
            if bar is not None:
                bar.update(len(b.ids))
    if bar is not None:
        bar.close()
    nl, ql, sc = (np.concatenate(x) for x in (nl, ql, sc))
    out = identification_report(nl, ql, ks, majority_k, sc)
    l2 = getattr(getattr(index, "spec", None), "metric", "cosine") == "l2"
    top1 = -sc[:, 0] if l2 else sc[:, 0]
    if softmax_scale is not None and l2:
        raise ValueError(f"{gallery}: the softmax open-set score needs a cosine or inner-product index, not l2")
    known = top1 if softmax_scale is None else (
        np.concatenate(mean_prob) if g_emb is not None else softmax_share(sc, nl, softmax_scale))
    mated = np.isin(ql, g_lab)
    out.update(open_set_report(nl[:, 0], known, ql, mated))   # queries of no gallery class
    if curve_out is not None and mated.any() and not mated.all():
        curve_out["fpir"], curve_out["dir"] = dir_fpir_curve((nl[:, 0] == ql)[mated], known[mated], known[~mated])
    if errors_out is not None:
        errors_out += _worst(np.concatenate(qid), ql, np.concatenate(nid), nl[:, 0], top1, n_errors)
    return out


def _read_gallery(gallery: Source, with_emb: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Gallery ids [G] (sorted), their labels [G] and, ``with_emb``, their vectors [G, d] (else None)."""
    g_ids, g_lab, g_emb = [], [], []
    for src in expand_sources([gallery]):       # a file, or a directory / glob of them (a head per rank)
        for b in iter_batches(src, 1 << 18, with_labels=True):
            if np.any(np.diff(b.labels.indptr) != 1):
                raise ValueError(f"{src}: identification needs exactly one label per gallery row")
            g_ids.append(b.ids)
            g_lab.append(b.labels.indices)
            if with_emb:
                g_emb.append(b.emb)
    ids = np.concatenate(g_ids)
    order = np.argsort(ids)
    return ids[order], np.concatenate(g_lab)[order], (np.concatenate(g_emb)[order] if with_emb else None)


def _mean_prob(q: np.ndarray, I: np.ndarray, pos: np.ndarray, g_emb: np.ndarray, labels: np.ndarray,
               dims: Sequence[int], scale: float, rows: int = 256) -> np.ndarray:
    """:func:`~xclass.eval.ensemble.mean_prob_share` of queries ``q`` [b, D] over their neighbours
    ``I`` [b, K] (gallery ids, -1 pads: zero vectors, masked by their -1 labels) at rows ``pos``
    [b, K] of ``g_emb`` (:func:`_gallery_positions`), ``rows`` queries at a time ([rows, K, D] gathered)."""
    from xclass.eval.ensemble import mean_prob_share

    out = []
    for s in range(0, len(q), rows):
        nbr = np.where((I[s:s + rows] >= 0)[..., None], g_emb[pos[s:s + rows]], 0.0)
        out.append(mean_prob_share(q[s:s + rows], nbr, labels[s:s + rows], dims, scale))
    return np.concatenate(out) if out else np.zeros(0)


def softmax_share(scores: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """``scores`` [n, K] similarities of each query's K nearest rows (best first) and their
    ``labels`` [n, K] (-1: no row) -> [n]: the share of the weights ``exp(scale * score)`` of those
    rows that falls on the 1-NN's label. With a gallery of a classifier head's class vectors
    (``export-index --head``) and K at least the number of classes, this is the classifier's
    largest softmax probability at its scale; with fewer, the softmax over the K nearest classes
    (the rest would add to the denominator, so it can only be smaller). Sub-centre heads export K
    rows per class: their weights add up (a sum over sub-centres where the head's logit takes the
    most similar one). Low for a query that
    sits between labels: an open-set score that a plain 1-NN similarity is not."""
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        w = np.where(labels >= 0, np.exp(scale * (scores.astype(np.float64) - scores[:, :1])), 0.0)
    return (w * (labels == labels[:, :1])).sum(1) / np.maximum(w.sum(1), 1e-300)


def _worst(q_ids, q_lab, n_ids, n_lab, score, n: int) -> List[dict]:
    """The ``n`` wrong 1-NN answers with the highest score (the most confident mistakes)."""
    wrong = np.flatnonzero(n_lab != q_lab)
    wrong = wrong[np.argsort(-score[wrong], kind="stable")][:n]
    return [{"rank": r + 1, "score": round(float(score[i]), 6), "query": int(q_ids[i]), "query_label": int(q_lab[i]),
             "nearest": int(n_ids[i]), "nearest_label": int(n_lab[i])} for r, i in enumerate(wrong)]


def _gallery_positions(I: np.ndarray, g_ids: np.ndarray, gallery: Source, offset: int) -> np.ndarray:
    """Neighbour ids ``I [b, K]`` (-1 pads) -> their rows in the sorted gallery ``g_ids`` (pads:
    any row, to be masked by ``I < 0``); an id the gallery lacks is an error naming the query row."""
    pos = np.clip(np.searchsorted(g_ids, I), 0, len(g_ids) - 1)
    unknown = (I >= 0) & (g_ids[pos] != I)
    if unknown.any():
        r, c = np.argwhere(unknown)[0]
        raise ValueError(f"{gallery}: has no row for id {int(I[r, c])}, which the index returned for query "
                         f"row {int(offset + r)}; was the index built from this gallery file?")
    return pos
