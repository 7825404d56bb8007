"""Known / unknown detection for ``tools/bench_traffic.py``: when a dataset's test split holds both
rows of training labels (closed set) and rows of held-out labels, every test row searches the
training rows, and the open-set identification metrics of ``xclass.eval.open_set`` say how well
each method's top-1 score tells the unknown applications apart while naming the known ones
(unknown_auroc, dir@fpir=0.01 / 0.1, knn_acc_mated). Scores: cosine for embeddings, minus the
squared Euclidean distance for the kNN inputs (within the port first for the ``_port`` variants: a row of
another port scores lower than any row of the query's own), the largest class probability for
the forests."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from xclass.eval.open_set import open_set_report

METRICS = ("unknown_auroc", "dir@fpir=0.01", "dir@fpir=0.1", "knn_acc_mated")


def top1(gallery: np.ndarray, g_lab: np.ndarray, queries: np.ndarray, cosine: bool,
         groups: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(label, score) of each query's nearest gallery row (:func:`bench_traffic.similarity`:
    cosine, or minus the squared Euclidean distance; ``groups``: the query's group first)."""
    from bench_traffic import similarity

    labels, scores = [], []
    for s in range(0, len(queries), 2048):
        sim = similarity(queries[s:s + 2048], gallery, cosine, groups, s)
        best = np.argmax(sim, axis=1)
        labels.append(g_lab[best])
        scores.append(sim[np.arange(len(best)), best])
    return np.concatenate(labels), np.concatenate(scores)


def class_cosines(emb: np.ndarray, head: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """``emb`` [n, d] against the head's class vectors ``head["vectors"]`` [R, d] with class ids
    ``head["ids"]`` [R] (sub-centre heads: several rows per class, a class scores by its most
    similar row) -> (classes [C], cosine [n, C])."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    classes, inverse = np.unique(head["ids"], return_inverse=True)
    cos_rows = unit(emb.astype(np.float64)) @ unit(head["vectors"].astype(np.float64)).T
    cos = np.full((len(emb), len(classes)), -np.inf)
    for j in range(len(head["ids"])):  # the class's best row
        cos[:, inverse[j]] = np.maximum(cos[:, inverse[j]], cos_rows[:, j])
    return classes, cos


def head_scores(members: List[Tuple[np.ndarray, Dict[str, Any]]]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """(class, score) per row from one trained head or an ensemble of them: ``members`` pairs each
    run's embeddings of the same rows [n, d_k] with its head (:func:`class_cosines`; the runs
    share class ids and scale). The class cosines are averaged over the runs (what the fused
    ``export-index --run A --run B --head`` vectors give a fused query); scores: the largest mean
    cosine and, with ``head["scale"]``, the largest softmax probability of scale * mean cosine
    (one run: the classifier's largest probability; several: the logit-averaged ensemble's) and,
    for several runs, the mean of the runs' probabilities of that class (``..._head_mean_prob``: a
    deep ensemble, as ``evaluate --open-set-softmax S --ensemble-mean-prob`` scores fused files)."""
    parts = [class_cosines(emb, head) for emb, head in members]
    classes = parts[0][0]
    if any(not np.array_equal(c, classes) for c, _ in parts):
        raise ValueError("head_scores: the heads' class ids differ")
    cos = sum(c for _, c in parts) / len(parts)
    best = np.argmax(cos, axis=1)
    out = {"xclass_trained_head_cos": (classes[best], cos.max(axis=1))}
    scale = members[0][1].get("scale")
    if scale:
        z = scale * (cos - cos.max(axis=1, keepdims=True))
        out["xclass_trained_head_msp"] = (classes[best], 1.0 / np.exp(z).sum(axis=1))
    if scale and len(parts) > 1:  # a deep ensemble: the runs' probabilities of that class averaged
        from scipy.special import softmax

        prob = sum(softmax(scale * c, axis=1) for _, c in parts) / len(parts)
        out["xclass_trained_head_mean_prob"] = (classes[best], prob[np.arange(len(best)), best])
    return out



def detection_rows(tr: Dict, te: Dict, closed: np.ndarray, x_tr: Dict[str, np.ndarray], x_te: Dict[str, np.ndarray],
                   forests: Dict[str, Any], embs: Dict[str, Dict], head: Optional[Dict[str, Any]] = None) -> List[Dict]:
    """Rows (protocol "detection") of every method; ``closed`` [n_test] marks the known-label rows,
    ``x_tr`` / ``x_te`` the kNN inputs of the training and test rows; ``head``: the trained run's
    class vectors (:func:`class_cosines`; they score the ``xclass_trained`` test rows), a list of
    them for an ensemble, each with its own run's test embeddings under ``"test"`` (``id``,
    ``emb``), or None."""
    found: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for tag in forests:
        groups = (tr["port_key"], te["port_key"]) if tag else None
        for name in x_tr:
            found[name + tag] = top1(x_tr[name], tr["label"], x_te[name], False, groups)
        p = forests[tag].predict_proba(te["rf" + tag])
        found["random_forest" + tag] = (forests[tag].classes_[np.argmax(p, 1)], p.max(1))
    for name, e in embs.items():
        pos = np.searchsorted(e["test"]["id"], te["id"])
        found[name] = top1(e["train"]["emb"], e["train"]["label"], e["test"]["emb"][pos], True)
        if name == "xclass_trained" and head is not None:
            heads = head if isinstance(head, list) else [dict(head, test=e["test"])]
            found.update(head_scores([(h["test"]["emb"][np.searchsorted(h["test"]["id"], te["id"])], h)
                                      for h in heads]))
    rows = []
    for method, (lab, score) in found.items():
        rep = open_set_report(lab, score, te["label"], closed)
        rows += [{"protocol": "detection", "method": method, "metric": m, "value": round(float(rep[m]), 4),
                  "n": int(len(closed))} for m in METRICS if m in rep]
    return rows
