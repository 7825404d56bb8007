"""Traffic scoring of ``tools/bench_tasks.py``: flow features for the baselines, the closed- and
open-set 1-NN of every method on the same rows, and the subsets of the queries (host-name labels,
same-capture gallery). Embeddings come in already computed; nothing here trains."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow.parquet as pq

#: packets of the kNN baseline on statistics + packets (``knn_stats_packets``)
KNN_PACKETS = 10


def nn1(gallery: np.ndarray, g_lab: np.ndarray, queries: np.ndarray, q_lab: np.ndarray,
        cosine: bool, groups: Any = None, pred: Optional[List[np.ndarray]] = None) -> Dict[str, float]:
    """1-NN accuracy (cosine on normalised rows, else Euclidean), in chunks: ``1nn_acc`` takes
    the first (lowest-index) nearest gallery row, ``1nn_tievote_acc`` the majority label of all
    gallery rows tied for nearest (see :func:`tie_vote`). ``groups = (gallery keys, query
    keys)``: the nearest row is looked for among the query's group first (kNN "with port").
    ``pred``: a list that receives the 1-NN labels, one array per chunk."""
    hits = votes = 0
    for s in range(0, len(queries), 2048):
        sim = similarity(queries[s:s + 2048], gallery, cosine, groups, s)
        first = g_lab[np.argmax(sim, axis=1)]
        if pred is not None:
            pred.append(first)
        hits += int((first == q_lab[s:s + 2048]).sum())
        votes += int((tie_vote(sim, g_lab) == q_lab[s:s + 2048]).sum())
    n = max(1, len(queries))
    return {"1nn_acc": hits / n, "1nn_tievote_acc": votes / n}


def similarity(q: np.ndarray, gallery: np.ndarray, cosine: bool, groups: Any = None, start: int = 0) -> np.ndarray:
    """[len(q), len(gallery)]: cosine (unit rows) or minus the squared Euclidean distance; with
    ``groups = (gallery keys, query keys)`` (``q`` = the queries from ``start`` on), the rows of
    another group score 1e9 lower, so the query's own group comes first."""
    sim = q @ gallery.T if cosine else -((q[:, None, :] - gallery[None]) ** 2).sum(-1)
    if groups is not None:
        sim = sim - 1e9 * (groups[1][start:start + len(q), None] != groups[0][None])
    return sim


def tie_vote(sim: np.ndarray, g_lab: np.ndarray, rtol: float = 1e-5) -> np.ndarray:
    """Per query row of ``sim [q, g]``: the most frequent label among the gallery rows whose
    similarity is within ``rtol * max(1, |best|)`` of the best (equal counts: the label met
    first in gallery order). Identical flows carrying different labels (nDPI labels from
    payload) are all nearest at once; plain 1-NN then takes an arbitrary one of them."""
    best = sim.max(axis=1, keepdims=True)
    tied = sim >= best - rtol * np.maximum(1.0, np.abs(best))
    out = g_lab[np.argmax(sim, axis=1)].copy()
    for i in np.flatnonzero(tied.sum(1) > 1):
        labs = g_lab[tied[i]]
        uniq, first, counts = np.unique(labs, return_index=True, return_counts=True)
        top = counts == counts.max()
        out[i] = uniq[top][np.argmin(first[top])]
    return out


def flow_features(path: str, n_pkts: int) -> Dict[str, np.ndarray]:
    t = pq.read_table(path).to_pydict()
    st = np.asarray(t["flow_stats"], np.float64)
    stats = np.sign(st) * np.log1p(np.abs(st))
    sizes = np.asarray(t["pkt_sizes"], np.float64)[:, :n_pkts] * np.asarray(t["pkt_dirs"], np.float64)[:, :n_pkts]
    iat = np.log1p(np.maximum(np.asarray(t["pkt_iat"], np.float64)[:, :n_pkts], 0))
    out = {"id": np.asarray(t["id"]), "label": np.asarray(t["label"]), "stats": stats, "rf": np.c_[stats, sizes, iat],
           "packets": np.c_[sizes[:, :KNN_PACKETS] / 300.0, iat[:, :KNN_PACKETS]]}
    if "source_file" in t and min(t["source_file"], default=-1) >= 0:
        out["source"] = np.asarray(t["source_file"], np.int64)
    if "server_port" in t and any(t["server_port"]):  # port-aware baselines next to the plain ones
        from xclass.models.encoders.flowcnn import EPHEMERAL_PORT

        port = np.minimum(np.asarray(t["server_port"], np.int64), EPHEMERAL_PORT)  # all dynamic ports alike
        proto = np.asarray(t["ip_proto"], np.int64)
        out["port_key"] = proto * 65536 + port
        out["rf_port"] = np.c_[out["rf"], port, proto]
    return out


def open_split(data: str, ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """is_query [n] for test rows: the dataset's gallery_query.parquet, else a seeded half split."""
    p = os.path.join(data, "gallery_query.parquet")
    if os.path.exists(p):
        g = pq.read_table(p).to_pydict()
        m = dict(zip(g["id"], g["is_query"]))
        return np.array([bool(m.get(int(i), False)) for i in ids])
    from xclass.eval.split import query_mask

    return query_mask(ids, labels, 0.5, 0)


def traffic_rows(data: str, meta: Dict, embs: Dict[str, Dict], n_pkts: int, seed: int,
                 head: Any = None) -> List[Dict]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    tr, te = flow_features(os.path.join(data, "train.parquet"), n_pkts), flow_features(
        os.path.join(data, "test.parquet"), n_pkts)
    scaler = StandardScaler().fit(tr["stats"])
    forest = lambda x: RandomForestClassifier(300, n_jobs=2, random_state=seed).fit(x, tr["label"])  # noqa: E731
    forests = {"": forest(tr["rf"]), **({"_port": forest(tr["rf_port"])} if "rf_port" in tr else {})}
    x_tr, x_te = knn_inputs(tr, scaler), knn_inputs(te, scaler)
    closed = te["label"] < int(meta["num_classes"])
    rows: List[Dict] = []
    if closed.any():
        rows += _closed_rows(meta, tr, te, closed, x_tr, x_te, forests, embs)
    if (~closed).any():
        rows += _open_rows(data, meta, te, ~closed, x_te, forests, embs)
    if closed.any() and (~closed).any():  # known and unknown labels in one test split
        from bench_detect import detection_rows

        rows += detection_rows(tr, te, closed, x_tr, x_te, forests, embs, head)
    return rows


def knn_inputs(f: Dict[str, np.ndarray], scaler: Any) -> Dict[str, np.ndarray]:
    """The rows the kNN baselines compare (Euclidean): ``knn_stats`` the standardised statistics;
    ``knn_stats_packets`` those and the first KNN_PACKETS packets (signed size / 300 bytes, log1p
    inter-arrival time), a nearest-flow match on what a handshake looks like."""
    st = scaler.transform(f["stats"])
    return {"knn_stats": st, "knn_stats_packets": np.c_[st, f["packets"]]}


def _nearest(g: Dict, q: Dict, tags: List[str], embs: Dict[str, tuple]) -> tuple:
    """1-NN of every kNN input (Euclidean; with tag "_port" within the query's port first) and
    every embedding (cosine). ``g`` / ``q``: {"x": {input name: rows}, "label", "port_key"};
    ``embs``: {method: (gallery embeddings, gallery labels, query embeddings)}. Returns
    ({method: metrics}, {method: predicted labels})."""
    res, preds = {}, {}
    for tag in tags:  # "" (statistics), "_port" (statistics + port, when the data have ports)
        groups = (g["port_key"], q["port_key"]) if tag else None
        for name in g["x"]:
            pred: List[np.ndarray] = []
            res[name + tag] = nn1(g["x"][name], g["label"], q["x"][name], q["label"], False, groups, pred=pred)
            preds[name + tag] = np.concatenate(pred)
    for name, (g_emb, g_lab, q_emb) in embs.items():
        pred = []
        res[name] = nn1(g_emb, g_lab, q_emb, q["label"], True, pred=pred)
        preds[name] = np.concatenate(pred)
    return res, preds


def _side(f: Dict, rows: np.ndarray, x: Dict[str, np.ndarray]) -> Dict:
    """The rows ``rows`` of flow features ``f`` with their kNN inputs ``x`` (all rows of ``f``)."""
    out = {"x": {k: v[rows] for k, v in x.items()}, "label": f["label"][rows]}
    return {**out, "port_key": f["port_key"][rows]} if "port_key" in f else out


def _closed_rows(meta: Dict, tr: Dict, te: Dict, closed: np.ndarray, x_tr: Dict[str, np.ndarray],
                 x_te: Dict[str, np.ndarray], forests: Dict, embs: Dict[str, Dict]) -> List[Dict]:
    """Closed set: test rows against the training rows (1-NN) and the forests' predictions; rows
    per method, then per method on the host-name / other subsets. ``x_tr`` / ``x_te``: the kNN
    inputs (:func:`knn_inputs`) of every training / test row."""
    every = np.ones(len(tr["label"]), bool)
    g, q = _side(tr, every, x_tr), _side(te, closed, x_te)
    pos = lambda e: np.searchsorted(e["test"]["id"], te["id"][closed])  # noqa: E731
    res, preds = _nearest(g, q, list(forests), {name: (e["train"]["emb"], e["train"]["label"], e["test"]["emb"][pos(e)])
                                               for name, e in embs.items()})
    for tag in forests:
        preds["random_forest" + tag] = forests[tag].predict(te["rf" + tag][closed])
        res["random_forest" + tag] = {"accuracy": float((preds["random_forest" + tag] == q["label"]).mean())}
    rows = _rows("closed", res, int(closed.sum()))
    for name, p in preds.items():
        rows += subset_rows(meta, name, p, q["label"], protocol="closed")
    return rows


def _open_rows(data: str, meta: Dict, te: Dict, opn: np.ndarray, x_te: Dict[str, np.ndarray], forests: Dict,
               embs: Dict[str, Dict]) -> List[Dict]:
    """Open set: the held-out labels' queries against their gallery (1-NN, forest proximity);
    the 1-NN of the embeddings and the kNN baselines also per subset (host-name labels, same-file
    gallery). ``x_te``: the kNN inputs of every test row."""
    idx = np.flatnonzero(opn)
    ids, lab = te["id"][idx], te["label"][idx]
    isq = open_split(data, ids, lab)
    g, q = _side(te, idx[~isq], x_te), _side(te, idx[isq], x_te)
    same = same_file_gallery(g["label"], te["source"][idx[~isq]], q["label"], te["source"][idx[isq]]) \
        if "source" in te else None
    em = {name: e["test"]["emb"][np.searchsorted(e["test"]["id"], ids)] for name, e in embs.items()}
    res, preds = _nearest(g, q, list(forests), {name: (v[~isq], lab[~isq], v[isq]) for name, v in em.items()})
    rows: List[Dict] = []
    for name, p in preds.items():
        rows += subset_rows(meta, name, p, q["label"], same)
    for tag in forests:
        res["random_forest" + tag + "_proximity"] = proximity_nn1(forests[tag], te["rf" + tag][opn], lab, ~isq, isq)
    return rows + _rows("open", res, int(isq.sum()))


#: nDPI protocols whose flows it names by the application found in a host name of the payload
#: (TLS / QUIC server name, DNS query, HTTP Host): labels ``TLS.Apple``, ``DNS.Amazon``, ...
CARRIERS = ("TLS", "DTLS", "QUIC", "DNS", "HTTP", "HTTP_Proxy", "HTTP_Connect")


def same_file_gallery(g_lab: np.ndarray, g_src: np.ndarray, q_lab: np.ndarray, q_src: np.ndarray) -> np.ndarray:
    """[q] bool: the query has a gallery row of its own label from its own input file."""
    have = set(zip(g_lab.tolist(), g_src.tolist()))
    return np.array([(l, s) in have for l, s in zip(q_lab.tolist(), q_src.tolist())], bool)


def subset_rows(meta: Dict, method: str, pred: np.ndarray, truth: np.ndarray,
                same_file: Optional[np.ndarray] = None, protocol: str = "open") -> List[Dict]:
    """The accuracy of ``method``'s predictions (for 1-NN the first nearest row, as ``1nn_acc``;
    the forest's class in the closed set) on the queries whose class name is ``CARRIER.APP`` (an
    application nDPI read from a host name, see CARRIERS) and on the others (none when no query
    has such a label); with ``same_file`` (:func:`same_file_gallery`) also on the queries with
    and without a same-file gallery row of their label."""
    names = meta.get("class_names") or []
    host = np.array([t < len(names) and "." in str(names[t]) and str(names[t]).split(".")[0] in CARRIERS
                     for t in truth], bool)
    parts = [("host-name labels", host), ("other labels", ~host)] if host.any() else []
    if same_file is not None:
        parts += [("same-file gallery", same_file), ("no same-file gallery", ~same_file)]
    return [{"protocol": protocol, "subset": subset, "method": method, "metric": "1nn_acc",
             "value": round(float((pred[m] == truth[m]).mean()), 4), "n": int(m.sum())}
            for subset, m in parts if m.any()]


def proximity_nn1(rf: Any, x: np.ndarray, lab: np.ndarray, g: np.ndarray, q: np.ndarray) -> Dict[str, float]:
    """Open-set 1-NN of the query rows ``x[q]`` against the gallery ``x[g]`` by the forest's
    proximity (the number of trees that put two rows in the same leaf)."""
    leaves = rf.apply(x)
    prox = np.stack([(leaves[g] == leaves[i]).sum(1) for i in np.flatnonzero(q)]).astype(np.float64)
    return {"1nn_acc": float((lab[g][np.argmax(prox, 1)] == lab[q]).mean()),
            "1nn_tievote_acc": float((tie_vote(prox, lab[g]) == lab[q]).mean())}


def _rows(protocol: str, res: Dict[str, Dict[str, float]], n: int) -> List[Dict]:
    """One JSON row per (method, metric); the forest's closed-set ``accuracy`` (a classifier's
    plurality over its trees) is written under both 1-NN metric names for one table."""
    out = []
    for method, metrics in res.items():
        if set(metrics) == {"accuracy"}:
            metrics = {"1nn_acc": metrics["accuracy"], "1nn_tievote_acc": metrics["accuracy"]}
        out += [{"protocol": protocol, "method": method, "metric": k, "value": round(v, 4), "n": n}
                for k, v in metrics.items()]
    return out
