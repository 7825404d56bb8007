"""Score fusion for XMC: a dual encoder's label scores + nearest-neighbour label votes.

Three sources, each turned into a per-label score in [0, 1] for one query:

- ``dual``: the run's top-K label cosines ``s`` -> ``exp(scale * (s - max s))`` (1 for the best
  label; ``scale`` is the head's training 1 / temperature, so this is the softmax ratio to the best).
- ``emb_knn``: the k nearest *training rows* in the run's own query-embedding space (cosine),
  each voting for its labels with its similarity; votes divided by the k similarities' sum, so a
  label carried by every neighbour scores 1 (a learned kNN: rows the encoder placed together).
- ``tfidf_knn``: the same vote over TF-IDF neighbours (:mod:`xclass.eval.tfidf`).
- any method that wrote a rankings Parquet (``id``, ``labels``, ``scores`` with scores in [0, 1],
  e.g. the linear ranker of :mod:`xclass.eval.ranker`), named by the caller
  (:func:`rankings_scores`). Without a dual run, :func:`fuse_data` fuses ``tfidf_knn`` with such
  sources only.

The fused score of a label is the weighted mean of its sources (0 where a source does not list
it); the ranking is the union of every source's candidates, ties broken towards the label with
more training rows. Nothing is fitted on test labels.

Shapes: embeddings ``[n, d]`` float32 (rows need not be normalised), label sets as
:class:`~xclass.eval.metrics.LabelSets`, rankings ``[n, K]`` int64 label ids with -1 pads.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from xclass.eval.tfidf import label_matrix  # noqa: F401 (callers import it from here too)


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


def fuse(sources: Sequence[Tuple[sp.csr_matrix, float]], top: int = 10,
         prior: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted mean of per-label score matrices (each ``[n, L]``, values in [0, 1]) -> the
    top-``top`` (label ids ``[n, top]`` best first with -1 pads; their fused scores ``[n, top]``,
    -inf pads). Ties (common with kNN votes: a label and the labels that always co-occur with it
    get the same votes) go to the higher ``prior`` ``[L]`` (e.g. training label counts), then the
    lower label id."""
    pri = np.zeros(sources[0][0].shape[1]) if prior is None else np.asarray(prior, np.float64)
    total = float(sum(w for _, w in sources))
    S = sum(m * (w / total) for m, w in sources).tocsr()  # type: ignore[union-attr]
    S.sum_duplicates()
    out = np.full((S.shape[0], top), -1, np.int64)
    val_out = np.full((S.shape[0], top), -np.inf, np.float32)
    for i in range(S.shape[0]):
        a, b = S.indptr[i], S.indptr[i + 1]
        idx, val = S.indices[a:b], S.data[a:b]
        keep = val > 0
        idx, val = idx[keep], val[keep]
        order = np.lexsort((idx, -pri[idx], -val))[:top]
        out[i, :len(order)], val_out[i, :len(order)] = idx[order], val[order]
    return out, val_out


SOURCES = ("dual", "emb_knn", "tfidf_knn")


def parse_weights(text: str, extra: Sequence[str] = ()) -> Dict[str, float]:
    """``"dual=1,emb_knn=1,tfidf_knn=1"`` -> {source: weight >= 0}; names other than
    :data:`SOURCES` and ``extra`` (rankings sources) are errors."""
    out: Dict[str, float] = {}
    names = tuple(SOURCES) + tuple(extra)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, val = part.partition("=")
        if name not in names:
            raise ValueError(f"fusion weight {name!r}: not one of {', '.join(names)}")
        try:
            w = float(val)
        except ValueError:
            raise ValueError(f"fusion weight {name}={val!r}: not a number") from None
        if not 0 <= w < float("inf"):
            raise ValueError(f"fusion weight {name}={val}: must be a finite number >= 0")
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


def rankings_scores(path: str, ids: np.ndarray, num_labels: int) -> sp.csr_matrix:
    """A rankings Parquet (``id``, ``labels`` list, ``scores`` list in [0, 1]) -> CSR
    ``[len(ids), L]`` in the order of the query ``ids`` ``[n]``; a query it lacks scores nothing."""
    from xclass.eval.io import read_table

    t = read_table(path, columns=["id", "labels", "scores"])
    lab, sc = t.column("labels").combine_chunks(), t.column("scores").combine_chunks()
    off = lab.offsets.to_numpy().astype(np.int64)
    li = lab.flatten().to_numpy().astype(np.int64)
    sv = np.clip(np.nan_to_num(sc.flatten().to_numpy(zero_copy_only=False), neginf=0.0), 0.0, 1.0)
    pos = {int(q): i for i, q in enumerate(np.asarray(ids))}
    row = np.array([pos.get(int(q), -1) for q in t.column("id").to_numpy()], np.int64)
    rows = np.repeat(row, np.diff(off))
    ok = (rows >= 0) & (li >= 0) & (sv > 0)
    M = sp.csr_matrix((sv[ok].astype(np.float32), (rows[ok], li[ok])), shape=(len(ids), num_labels))
    M.sum_duplicates()
    return M


def test_ids(data: str) -> np.ndarray:
    """The ``id`` column ``[n_test]`` of ``data``'s test split, in file order."""
    import os

    from xclass.eval.io import read_table

    return read_table(os.path.join(data, "test.parquet"), columns=["id"]).column("id").to_numpy()


def data_rankings(data: str, rankings: Dict[str, str]) -> Dict[str, sp.csr_matrix]:
    """name -> rankings Parquet path  ->  name -> CSR ``[n_test, L]`` in ``data``'s test-split
    order (:func:`rankings_scores`), the ``extra`` sources of :func:`fuse_data`."""
    if not rankings:
        return {}
    ids, n_labels = test_ids(data), read_meta_num_classes(data)
    return {name: rankings_scores(path, ids, n_labels) for name, path in rankings.items()}


def fuse_data(data: str, weights: Dict[str, float], extra: Dict[str, sp.csr_matrix], k: int = 50, top: int = 10,
              tfidf_nbrs: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    """Fusion without a dual run: ``tfidf_knn`` votes and the ``extra`` sources (name -> CSR
    ``[n_test, L]`` in test-split order) -> (test ids [n], label ids [n, top], scores [n, top])."""
    import os

    from xclass.eval.tfidf import read_split

    for name in ("dual", "emb_knn"):
        if weights.get(name):
            raise ValueError(f"fusion source {name!r} needs a dual run (--run)")
    n_labels = read_meta_num_classes(data)
    ids = test_ids(data)
    Y = label_matrix(read_split(os.path.join(data, "train.parquet"))[1], n_labels)
    src: Dict[str, Optional[sp.csr_matrix]] = dict(extra)
    if weights.get("tfidf_knn"):
        src["tfidf_knn"] = knn_votes(*(tfidf_nbrs or tfidf_neighbours(data, k)), Y)
    lab, val = fuse(used(weights, src), top, prior=np.asarray(Y.sum(0)).ravel())
    return ids, lab, val


def tfidf_neighbours(data: str, k: int, chunk: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """(similarities, train-row ids) ``[n_test, k]`` of the TF-IDF cosine kNN of ``data``'s test
    rows among its train rows (the vectors of :func:`xclass.eval.tfidf.features`)."""
    import os

    from xclass.eval.tfidf import features, neighbours, read_split

    Xtr, _, _ = read_split(os.path.join(data, "train.parquet"))
    Xte, _, _ = read_split(os.path.join(data, "test.parquet"))
    D, Q, _ = features(Xtr, Xte)
    sims, ids = [], []
    for _, s, nn in neighbours(Q, D, k, chunk):
        sims.append(s)
        ids.append(nn)
    return np.concatenate(sims).astype(np.float32), np.concatenate(ids).astype(np.int64)


def fuse_run(run: str, work: str, weights: Dict[str, float], k: int = 50, top: int = 10,
             data: Optional[str] = None, tfidf_nbrs: Optional[Tuple[np.ndarray, np.ndarray]] = None,
             rankings: Optional[Dict[str, str]] = None):
    """Fused top-``top`` rankings of the test split of a trained dual run: -> (test ids [n],
    label ids [n, top], scores [n, top]). ``work`` is (or becomes) the directory of
    :func:`xclass.eval.xmc_run.evaluate_run` (label index, test embeddings); the training rows'
    embeddings are written there too. ``tfidf_nbrs``: precomputed TF-IDF neighbours (else
    computed when ``tfidf_knn`` has a weight). ``rankings``: more sources, name -> rankings
    Parquet of the same test split (:func:`rankings_scores`)."""
    import os

    from xclass.eval.io import read_table
    from xclass.eval.searcher import ShardedIndex
    from xclass.eval.embed import load_run
    from xclass.eval.xmc_run import embed_xmc_split, evaluate_run
    from xclass.eval.tfidf import read_split

    cfg = load_run(run)
    data = data or cfg.data.path
    n_labels = int(read_meta_num_classes(data))
    if not os.path.exists(os.path.join(work, "label_index")):
        evaluate_run(run, work, (1,), data_path=data)

    def emb(path: str) -> np.ndarray:
        col = read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
        return col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32)

    test_path = os.path.join(work, "test_embeddings.parquet")
    q, ids = emb(test_path), read_table(test_path, columns=["id"]).column("id").to_numpy()
    src: Dict[str, Optional[sp.csr_matrix]] = {"dual": None, "emb_knn": None, "tfidf_knn": None}
    Y = label_matrix(read_split(os.path.join(data, "train.parquet"))[1], n_labels)
    if weights.get("dual"):
        scale = float(dict(cfg.head.params or {}).get("scale", 20.0))
        sc, lab = ShardedIndex.open(os.path.join(work, "label_index")).search(q, 100)
        src["dual"] = dual_scores(np.asarray(lab), np.asarray(sc), scale, n_labels)
    if weights.get("emb_knn"):
        tr = embed_xmc_split(run, data, "train", os.path.join(work, "train_embeddings.parquet"))
        src["emb_knn"] = knn_votes(*embedding_knn(q, emb(tr), k), Y)
    if weights.get("tfidf_knn"):
        src["tfidf_knn"] = knn_votes(*(tfidf_nbrs or tfidf_neighbours(data, k)), Y)
    for name, path in (rankings or {}).items():
        src[name] = rankings_scores(path, ids, n_labels)
    lab, val = fuse(used(weights, src), top, prior=np.asarray(Y.sum(0)).ravel())
    return ids, lab, val


def read_meta_num_classes(data: str) -> int:
    from xclass.data.meta import load_meta

    return int(load_meta(data)["num_classes"])
