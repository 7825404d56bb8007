"""Train and evaluate xclass on a dataset directory next to same-run baselines; JSON lines.

    PYTHONPATH=. python tools/bench_tasks.py --data DIR --config CONFIG [--out runs/bench_tasks] [KEY=VALUE ...]

Trains ``CONFIG`` on ``DIR`` (extra ``KEY=VALUE`` overrides go to ``xclass train``), then embeds
the splits with the trained encoder and with the same encoder at random initialisation (same
seed), and scores every method on the same rows:

- quic (traffic): closed set = test rows of training classes, 1-NN against the training split;
  open set = test rows of held-out classes, 1-NN of the queries against the gallery of
  ``gallery_query.parquet`` (or a seeded half/half split). Baselines: kNN (k=1, standardised
  signed-log flow statistics) and a random forest (300 trees) on the statistics + the first N
  packets (signed size, log inter-arrival time); the forest classifies closed-set rows and, for
  the open set, gives its leaf co-occurrence proximity for 1-NN. When the data carry the
  service port (``import pcap``), both also run with it (``knn_stats_port``: the nearest row of
  the same port and protocol first; ``random_forest_port``: port and protocol as two more
  features), so a model that reads the port is compared with baselines that read it too.
- face / speaker: verification EER (and face 10-fold accuracy) on pairs/trials; baselines grey
  pixels + PCA-64 fitted on the training split (face) and standardised log-mel mean + std over
  the utterance (speaker), cosine scores.

Embedding 1-NN uses cosine similarity. Traffic rows give two metrics per method: ``1nn_acc``
(the first of equally near gallery rows) and ``1nn_tievote_acc`` (the majority label of all
equally near rows: identical flows can carry different nDPI labels); the forest's closed-set
accuracy is written under both names. Each row: task, data, config, overrides, seed,
train_seconds, protocol, method, metric, value, n. Rows with a ``subset`` key split ``1nn_acc``
(closed set: every method, the forest by its predicted class; open set: the embeddings) into
queries with nDPI host-name labels (``TLS.Apple``: see CARRIERS) and the others, and in the open
set, when the data name each row's input file (``source_file``, as ``import pcap`` writes it),
into queries with a gallery row of their label from their own file (capture) and the others.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xclass import components
from xclass.cli import main as xclass
from xclass.config import load_config
from xclass.data.reader import ParquetReader
from xclass.eval.embed import encode_batch, load_encoder
from xclass.data.meta import load_meta, split_files


def embed(enc: torch.nn.Module, cfg: Any, meta: Dict, data: str, split: str) -> Dict[str, np.ndarray]:
    """{"id", "label", "emb" (L2-normalised)} of every row of ``split``."""
    decode = components.make_decoder(cfg.data.task, meta)
    reader = ParquetReader(split_files(data, split), components.input_columns(cfg.data.task, cfg.model.encoder, meta),
                           rank=0, world_size=1, batch_rows=1024, seed=0, shuffle=False)
    reader.set_epoch(0)
    ids, labels, embs = [], [], []
    with torch.no_grad():
        for batch in reader:
            inputs, _ = decode(batch)
            embs.append(encode_batch(enc, inputs))
            ids.append(np.asarray(batch["id"]))
            labels.append(np.asarray(batch["label"]))
    e = np.concatenate(embs)
    return {"id": np.concatenate(ids), "label": np.concatenate(labels),
            "emb": e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)}


def nn1(gallery: np.ndarray, g_lab: np.ndarray, queries: np.ndarray, q_lab: np.ndarray,
        cosine: bool, groups: Any = None, pred: Optional[List[np.ndarray]] = None) -> Dict[str, float]:
    """1-NN accuracy (cosine on normalised rows, else Euclidean), in chunks: ``1nn_acc`` takes
    the first (lowest-index) nearest gallery row, ``1nn_tievote_acc`` the majority label of all
    gallery rows tied for nearest (see :func:`tie_vote`). ``groups = (gallery keys, query
    keys)``: the nearest row is looked for among the query's group first (kNN "with port").
    ``pred``: a list that receives the 1-NN labels, one array per chunk."""
    hits = votes = 0
    for s in range(0, len(queries), 2048):
        q = queries[s:s + 2048]
        sim = q @ gallery.T if cosine else -((q[:, None, :] - gallery[None]) ** 2).sum(-1)
        if groups is not None:
            sim = sim - 1e9 * (groups[1][s:s + 2048, None] != groups[0][None])
        first = g_lab[np.argmax(sim, axis=1)]
        if pred is not None:
            pred.append(first)
        hits += int((first == q_lab[s:s + 2048]).sum())
        votes += int((tie_vote(sim, g_lab) == q_lab[s:s + 2048]).sum())
    n = max(1, len(queries))
    return {"1nn_acc": hits / n, "1nn_tievote_acc": votes / n}


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
    out = {"id": np.asarray(t["id"]), "label": np.asarray(t["label"]), "stats": stats, "rf": np.c_[stats, sizes, iat]}
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


def traffic_rows(data: str, meta: Dict, embs: Dict[str, Dict], n_pkts: int, seed: int) -> List[Dict]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    tr, te = flow_features(os.path.join(data, "train.parquet"), n_pkts), flow_features(
        os.path.join(data, "test.parquet"), n_pkts)
    scaler = StandardScaler().fit(tr["stats"])
    forest = lambda x: RandomForestClassifier(300, n_jobs=2, random_state=seed).fit(x, tr["label"])  # noqa: E731
    forests = {"": forest(tr["rf"]), **({"_port": forest(tr["rf_port"])} if "rf_port" in tr else {})}
    closed = te["label"] < int(meta["num_classes"])
    rows: List[Dict] = []
    if closed.any():
        rows += _closed_rows(meta, tr, te, closed, scaler, forests, embs)
    if (~closed).any():
        rows += _open_rows(data, meta, te, ~closed, scaler, forests, embs)
    return rows


def _closed_rows(meta: Dict, tr: Dict, te: Dict, closed: np.ndarray, scaler: Any, forests: Dict,
                 embs: Dict[str, Dict]) -> List[Dict]:
    """Closed set: test rows against the training rows (1-NN) and the forests' predictions; rows
    per method, then per method on the host-name / other subsets."""
    q = te["label"][closed]
    g_st, q_st = scaler.transform(tr["stats"]), scaler.transform(te["stats"][closed])
    res, preds = {}, {}
    for tag in forests:  # "" (statistics), "_port" (statistics + port, when the data have ports)
        groups = (tr["port_key"], te["port_key"][closed]) if tag else None
        pred: List[np.ndarray] = []
        res["knn_stats" + tag] = nn1(g_st, tr["label"], q_st, q, False, groups, pred=pred)
        preds["knn_stats" + tag] = np.concatenate(pred)
        preds["random_forest" + tag] = forests[tag].predict(te["rf" + tag][closed])
        res["random_forest" + tag] = {"accuracy": float((preds["random_forest" + tag] == q).mean())}
    for name, e in embs.items():
        pos = np.searchsorted(e["test"]["id"], te["id"][closed])
        pred = []
        res[name] = nn1(e["train"]["emb"], e["train"]["label"], e["test"]["emb"][pos], q, True, pred=pred)
        preds[name] = np.concatenate(pred)
    rows = _rows("closed", res, int(closed.sum()))
    for name, p in preds.items():
        rows += subset_rows(meta, name, p, q, protocol="closed")
    return rows


def _open_rows(data: str, meta: Dict, te: Dict, opn: np.ndarray, scaler: Any, forests: Dict,
               embs: Dict[str, Dict]) -> List[Dict]:
    """Open set: the held-out labels' queries against their gallery (1-NN, forest proximity);
    the embeddings' 1-NN also per subset (host-name labels, same-file gallery)."""
    ids, lab = te["id"][opn], te["label"][opn]
    isq = open_split(data, ids, lab)
    g, q = ~isq, isq
    same = same_file_gallery(lab[g], te["source"][opn][g], lab[q], te["source"][opn][q]) if "source" in te else None
    st = scaler.transform(te["stats"][opn])
    res = {"knn_stats": nn1(st[g], lab[g], st[q], lab[q], False),
           "random_forest_proximity": proximity_nn1(forests[""], te["rf"][opn], lab, g, q)}
    if "_port" in forests:
        key = te["port_key"][opn]
        res["knn_stats_port"] = nn1(st[g], lab[g], st[q], lab[q], False, (key[g], key[q]))
        res["random_forest_port_proximity"] = proximity_nn1(forests["_port"], te["rf_port"][opn], lab, g, q)
    rows: List[Dict] = []
    for name, e in embs.items():
        em = e["test"]["emb"][np.searchsorted(e["test"]["id"], ids)]
        pred: List[np.ndarray] = []
        res[name] = nn1(em[g], lab[g], em[q], lab[q], True, pred=pred)
        rows += subset_rows(meta, name, np.concatenate(pred), lab[q], same)
    return rows + _rows("open", res, int(q.sum()))


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


def _verif(scores: np.ndarray, same: np.ndarray, face: bool) -> Dict[str, float]:
    from xclass.eval.verification import eer, kfold_accuracy

    out = {"eer": eer(scores, same)}
    if face:
        out["acc_10fold"] = kfold_accuracy(scores, same)[0]
    return out


def raw_features(path: str, task: str, meta: Dict) -> Dict[str, np.ndarray]:
    """Baseline inputs: grey pixels (face) or log-mel mean + std over valid frames (speaker)."""
    t = pq.read_table(path).to_pydict()
    if task == "face":
        img = np.asarray(t["image"], np.float32)
        c = int(meta["inputs"]["image"].get("channels", 3))
        x = img.reshape(len(img), -1, c).mean(-1) / 255.0
    else:
        n_mels = int(meta["inputs"]["fbank"]["n_mels"])
        x = np.stack([np.r_[f.mean(0), f.std(0)] for f in
                      (np.asarray(v, np.float32).reshape(-1, n_mels) for v in t["fbank"])])
    return {"id": np.asarray(t["id"]), "label": np.asarray(t["label"]), "x": x}


def verification_rows(data: str, meta: Dict, embs: Dict[str, Dict]) -> List[Dict]:
    """EER (and face 10-fold accuracy) on the dataset's pairs/trials for every method."""
    from sklearn.decomposition import PCA

    task = meta["task"]
    fname, cols = ("pairs.parquet", ("a", "b", "same")) if task == "face" else ("trials.parquet",
                                                                               ("enroll", "test", "target"))
    pr = pq.read_table(os.path.join(data, fname)).to_pydict()
    a, b, same = np.asarray(pr[cols[0]]), np.asarray(pr[cols[1]]), np.asarray(pr[cols[2]], bool)
    tr = raw_features(os.path.join(data, "train.parquet"), task, meta)
    te = raw_features(os.path.join(data, "test.parquet"), task, meta)
    if task == "face":
        pca = PCA(64, random_state=0).fit(tr["x"])
        base, name = pca.transform(te["x"]), "pixels_pca64"
    else:
        mu, sd = tr["x"].mean(0), tr["x"].std(0) + 1e-6
        base, name = (te["x"] - mu) / sd, "logmel_mean_std"
    feats = {name: (te["id"], base)}
    feats.update({k: (e["test"]["id"], e["test"]["emb"]) for k, e in embs.items()})
    rows = []
    for method, (ids, x) in feats.items():
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        order = np.argsort(ids)
        pos = lambda v: order[np.searchsorted(ids[order], v)]  # noqa: E731
        scores = (x[pos(a)] * x[pos(b)]).sum(1)
        for metric, v in _verif(scores, same, task == "face").items():
            rows.append({"protocol": "verification", "method": method, "metric": metric, "value": round(v, 4),
                         "n": int(len(same))})
    return rows


def validation_data(data: str, fraction: float, seed: int, out: str, classes: int = 0) -> str:
    """A dataset made of the TRAINING split only, so recipe choices never see the real test rows.
    Closed set (``classes`` = 0): ``fraction`` of each class's training rows (seeded, stratified)
    become its test split. Open set (``classes`` = K > 0): the rows of K seeded training classes
    become the test split, relabelled after the remaining classes (which are renumbered 0..C'-1),
    and are split half/half into gallery and queries by the benchmark. Written under ``out``."""
    import shutil
    from xclass.eval.split import query_mask
    from xclass.importers.common import split_info

    meta = load_meta(data)
    t = pq.read_table(split_files(data, "train")[0])
    ids, labels = np.asarray(t["id"]), np.asarray(t["label"])
    names = meta["class_names"][:int(meta["num_classes"])]
    if classes:
        held = np.random.default_rng(seed).permutation(np.unique(labels))[:classes]
        is_test = np.isin(labels, held)
        order = [c for c in range(len(names)) if c not in set(held.tolist())] + sorted(held.tolist())
        new_id = np.empty(len(names), np.int64)
        new_id[order] = np.arange(len(order))
        t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(new_id[labels], pa.int64()))
        names, meta["num_classes"], meta["test_classes"] = [names[c] for c in order], len(names) - classes, classes
    else:
        is_test = query_mask(ids, labels, fraction, seed)
        meta["test_classes"] = 0
    path = os.path.join(out, "validation_data")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    meta["splits"], meta["class_names"] = {}, names
    meta.pop("gallery_query", None)
    for split, keep in (("train", ~is_test), ("test", is_test)):
        part = t.filter(pa.array(keep))
        pq.write_table(part, os.path.join(path, f"{split}.parquet"))
        meta["splits"][split] = split_info(split, np.asarray(part["id"]), np.asarray(part["label"]))
    meta["source"] = {**meta.get("source", {}), "validation_of": os.path.abspath(data),
                      "validation_fraction": fraction, "validation_classes": classes, "validation_seed": seed}
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default="runs/bench_tasks")
    ap.add_argument("--packets", type=int, default=30, help="first N packets for the random forest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--validation", type=float, default=0.0, metavar="F",
                    help="closed-set check on the training split only: F of each class's training rows "
                         "(seeded by --seed) are the queries, the test split is not read")
    ap.add_argument("--validation-classes", type=int, default=0, metavar="K",
                    help="open-set check on the training split only: K training classes (seeded) are held "
                         "out as gallery + queries, the test split is not read")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run_dir = os.path.join(a.out, "run")
    if a.validation or a.validation_classes:
        a.data = validation_data(a.data, a.validation, a.seed, a.out, a.validation_classes)
    t0 = time.perf_counter()
    rc = xclass(["train", "--config", a.config, f"data.path={a.data}", f"train.out_dir={run_dir}",
                 "train.progress=false", f"train.seed={a.seed}", *a.overrides])
    if rc:
        return rc
    train_s = time.perf_counter() - t0
    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    meta = load_meta(a.data)
    components.load_all()
    torch.manual_seed(cfg.train.seed)
    random_enc = components.build_encoder(cfg.model, meta).eval()
    embs = {name: {s: embed(enc, cfg, meta, a.data, s) for s in ("train", "test")}
            for name, enc in (("xclass_trained", load_encoder(run_dir, cfg, meta)), ("xclass_random_init", random_enc))}
    if meta["task"] == "quic":
        rows = traffic_rows(a.data, meta, embs, a.packets, a.seed)
    else:
        rows = verification_rows(a.data, meta, embs)
    for r in rows:
        print(json.dumps({"task": meta["task"], "data": os.path.abspath(a.data), "config": a.config,
                          "overrides": a.overrides, "seed": a.seed, "train_seconds": round(train_s, 1), **r}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
