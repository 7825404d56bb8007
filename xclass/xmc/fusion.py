"""Score fusion for XMC: a dual encoder's label scores + nearest-neighbour label votes.

Three sources, each turned into a per-label score in [0, 1] for one query:

- ``dual``: the run's top-K label cosines ``s`` -> ``exp(scale * (s - max s))`` (1 for the best
  label; ``scale`` is the head's training 1 / temperature, so this is the softmax ratio to the best).
- ``emb_knn``: the k nearest *training rows* in the run's own query-embedding space (cosine),
  each voting for its labels with its similarity; votes divided by the k similarities' sum, so a
  label carried by every neighbour scores 1 (a learned kNN: rows the encoder placed together).
- ``tfidf_knn``: the same vote over TF-IDF neighbours (:mod:`xclass.xmc.tfidf`).

The fused score of a label is the weighted mean of its sources (0 where a source does not list
it); the ranking is the union of every source's candidates. Nothing is fitted on test labels.

Shapes: embeddings ``[n, d]`` float32 (rows need not be normalised), label sets as
:class:`~xclass.eval.metrics.LabelSets`, rankings ``[n, K]`` int64 label ids with -1 pads.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from xclass.eval.metrics import LabelSets


def label_matrix(labels: LabelSets, num_labels: int) -> sp.csr_matrix:
    """Binary CSR ``[n, num_labels]`` of label sets."""
    return sp.csr_matrix((np.ones(len(labels.indices), np.float32), labels.indices, labels.indptr),
                         shape=(labels.n_rows, num_labels))


def knn_votes(sim: np.ndarray, nbr: np.ndarray, Y: sp.csr_matrix) -> sp.csr_matrix:
    """``sim``/``nbr`` ``[n, k]`` (similarities, training-row ids; -1 = none) and training labels
    ``Y`` ``[N, L]`` -> CSR ``[n, L]``: sum of neighbour similarities per label / sum of all k
    similarities (negative similarities count as 0)."""
    n, k = nbr.shape
    w = np.where(nbr >= 0, np.maximum(sim, 0.0), 0.0).astype(np.float32)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    V = sp.csr_matrix((w.ravel(), np.maximum(nbr, 0).ravel(), np.arange(0, n * k + 1, k)), shape=(n, Y.shape[0]))
    return sp.csr_matrix(V @ Y)


def embedding_knn(query: np.ndarray, train: np.ndarray, k: int = 50, threads: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN (FAISS flat inner product on L2-normalised copies): -> (sim, ids) ``[n, k]``."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    index = faiss.IndexFlatIP(train.shape[1])
    index.add(unit(train))
    sim, ids = index.search(unit(query), k)
    return sim, ids


def dual_scores(labels: np.ndarray, scores: np.ndarray, scale: float, num_labels: int) -> sp.csr_matrix:
    """Top-K (label ids, cosines) ``[n, K]`` -> CSR ``[n, L]`` of ``exp(scale * (s - max s))``."""
    n, K = labels.shape
    ok = labels >= 0
    s = np.where(ok, scores, -np.inf).astype(np.float64)
    top = s.max(1, keepdims=True)
    val = np.where(ok, np.exp(scale * (s - np.where(np.isfinite(top), top, 0.0))), 0.0).astype(np.float32)
    return sp.csr_matrix((val.ravel(), np.maximum(labels, 0).ravel(), np.arange(0, n * K + 1, K)),
                         shape=(n, num_labels))


def fuse(sources: Sequence[Tuple[sp.csr_matrix, float]], top: int = 10) -> np.ndarray:
    """Weighted mean of per-label score matrices (each ``[n, L]``, values in [0, 1]) -> the
    top-``top`` label ids ``[n, top]`` (best first, -1 pads; ties by label id)."""
    total = float(sum(w for _, w in sources))
    S = sum(m * (w / total) for m, w in sources).tocsr()  # type: ignore[union-attr]
    S.sum_duplicates()
    out = np.full((S.shape[0], top), -1, np.int64)
    for i in range(S.shape[0]):
        a, b = S.indptr[i], S.indptr[i + 1]
        idx, val = S.indices[a:b], S.data[a:b]
        keep = val > 0
        idx, val = idx[keep], val[keep]
        order = np.lexsort((idx, -val))[:top]
        out[i, :len(order)] = idx[order]
    return out


def parse_weights(text: str) -> Dict[str, float]:
    """``"dual=1,emb_knn=1,tfidf_knn=1"`` -> {source: weight >= 0}; unknown names are errors."""
    out: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, val = part.partition("=")
        if name not in ("dual", "emb_knn", "tfidf_knn"):
            raise ValueError(f"fusion weight {name!r}: not one of dual, emb_knn, tfidf_knn")
        w = float(val)
        if not w >= 0:
            raise ValueError(f"fusion weight {name}={val}: must be >= 0")
        out[name] = w
    if not any(out.values()):
        raise ValueError(f"fusion weights {text!r}: at least one must be > 0")
    return out


def used(weights: Dict[str, float], sources: Dict[str, Optional[sp.csr_matrix]]) -> List[Tuple[sp.csr_matrix, float]]:
    """The (matrix, weight) pairs with weight > 0; a weighted source that is missing is an error."""
    out = []
    for name, w in weights.items():
        if w > 0:
            if sources.get(name) is None:
                raise ValueError(f"fusion source {name!r} has weight {w} but was not computed")
            out.append((sources[name], w))
    return out
