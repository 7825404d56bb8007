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
  the open set, gives its leaf co-occurrence proximity for 1-NN.
- face / speaker: verification EER (and face 10-fold accuracy) on pairs/trials; baselines grey
  pixels + PCA-64 fitted on the training split (face) and standardised log-mel mean + std over
  the utterance (speaker), cosine scores.

Embedding 1-NN uses cosine similarity. Each row: task, protocol, method, metric, value, n.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np
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
    reader = ParquetReader(split_files(data, split), components.input_columns(cfg.data.task, cfg.model.encoder),
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


def nn1(gallery: np.ndarray, g_lab: np.ndarray, queries: np.ndarray, q_lab: np.ndarray, cosine: bool) -> float:
    """1-NN accuracy (cosine on normalised rows, else Euclidean), in chunks."""
    hits = 0
    for s in range(0, len(queries), 2048):
        q = queries[s:s + 2048]
        d = -q @ gallery.T if cosine else ((q[:, None, :] - gallery[None]) ** 2).sum(-1)
        hits += int((g_lab[np.argmin(d, axis=1)] == q_lab[s:s + 2048]).sum())
    return hits / max(1, len(queries))


def flow_features(path: str, n_pkts: int) -> Dict[str, np.ndarray]:
    t = pq.read_table(path).to_pydict()
    st = np.asarray(t["flow_stats"], np.float64)
    stats = np.sign(st) * np.log1p(np.abs(st))
    sizes = np.asarray(t["pkt_sizes"], np.float64)[:, :n_pkts] * np.asarray(t["pkt_dirs"], np.float64)[:, :n_pkts]
    iat = np.log1p(np.maximum(np.asarray(t["pkt_iat"], np.float64)[:, :n_pkts], 0))
    return {"id": np.asarray(t["id"]), "label": np.asarray(t["label"]), "stats": stats,
            "rf": np.c_[stats, sizes, iat]}


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
    C = int(meta["num_classes"])
    scaler = StandardScaler().fit(tr["stats"])
    rf = RandomForestClassifier(300, n_jobs=2, random_state=seed, min_samples_leaf=1).fit(tr["rf"], tr["label"])
    rows: List[Dict] = []
    closed = te["label"] < C
    if closed.any():
        q = te["label"][closed]
        res = {"knn_stats": nn1(scaler.transform(tr["stats"]), tr["label"], scaler.transform(te["stats"][closed]), q,
                                False),
               "random_forest": float((rf.predict(te["rf"][closed]) == q).mean())}
        for name, e in embs.items():
            pos = np.searchsorted(e["test"]["id"], te["id"][closed])
            res[name] = nn1(e["train"]["emb"], e["train"]["label"], e["test"]["emb"][pos], q, True)
        rows += [{"protocol": "closed", "method": k, "metric": "1nn_acc", "value": round(v, 4), "n": int(closed.sum())}
                 for k, v in res.items()]
    opn = ~closed
    if opn.any():
        ids, lab = te["id"][opn], te["label"][opn]
        isq = open_split(data, ids, lab)
        g, q = ~isq, isq
        st = scaler.transform(te["stats"][opn])
        leaves = rf.apply(te["rf"][opn])
        prox_hits = 0
        for i in np.flatnonzero(q):
            prox = (leaves[g] == leaves[i]).sum(1)
            prox_hits += int(lab[g][np.argmax(prox)] == lab[i])
        res = {"knn_stats": nn1(st[g], lab[g], st[q], lab[q], False),
               "random_forest_proximity": prox_hits / max(1, int(q.sum()))}
        for name, e in embs.items():
            pos = np.searchsorted(e["test"]["id"], ids)
            em = e["test"]["emb"][pos]
            res[name] = nn1(em[g], lab[g], em[q], lab[q], True)
        rows += [{"protocol": "open", "method": k, "metric": "1nn_acc", "value": round(v, 4), "n": int(q.sum())}
                 for k, v in res.items()]
    return rows


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default="runs/bench_tasks")
    ap.add_argument("--packets", type=int, default=30, help="first N packets for the random forest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run_dir = os.path.join(a.out, "run")
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
                          "train_seconds": round(train_s, 1), **r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
