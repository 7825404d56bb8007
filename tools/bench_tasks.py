"""Train and evaluate xclass on a dataset directory next to same-run baselines; JSON lines.

    PYTHONPATH=. python tools/bench_tasks.py --data DIR --config CONFIG [--out runs/bench_tasks] [KEY=VALUE ...]
    ... [--validation F | --validation-classes K] [--train-labels N] [--ensemble K]

A config with ``train.ensemble: K`` (or ``--ensemble K``, which sets it) trains K member runs
(seeds ``seed + 1000 k``, :mod:`xclass.train.members`) and scores their fused embeddings, as
``export-index --run OUT_DIR`` writes them (the random init fused from the K initial networks);
``--ensemble 1`` scores one run of an ensemble recipe.
``--validation`` / ``--validation-classes`` score a closed / open split of the training rows
instead of the test split (for choosing a recipe); ``--train-labels N`` trains on N of the
training classes (a learning curve over labels). Both derive a dataset under ``--out``
(tools/task_splits.py).

Trains ``CONFIG`` on ``DIR`` (extra ``KEY=VALUE`` overrides go to ``xclass train``), then embeds
the splits with the trained encoder and with the same encoder at random initialisation (same
seed), and scores every method on the same rows:

- quic (traffic): closed set = test rows of training classes, 1-NN against the training split;
  open set = test rows of held-out classes, 1-NN of the queries against the gallery of
  ``gallery_query.parquet`` (or a seeded half/half split). Baselines: kNN (k=1, Euclidean) on the
  standardised signed-log flow statistics (``knn_stats``) and on those + the first 10 packets
  (``knn_stats_packets``: signed size / 300, log inter-arrival time), and a random forest (300
  trees) on the statistics + the first N packets (signed size, log inter-arrival time); the
  forest classifies closed-set rows and, for the open set, gives its leaf co-occurrence
  proximity for 1-NN. When the data carry the
  service port (``import pcap``), all also run with it (``knn_stats_port``: the nearest row of
  the same port and protocol first; ``random_forest_port``: port and protocol as two more
  features), so a model that reads the port is compared with baselines that read it too.
  When the test split holds both (``import pcap --test-fraction F --test-classes K``), ``detection``
  rows also say how well each method's top-1 score over the training rows tells the held-out
  labels from the known ones, and the trained head's class vectors are scored as a classifier
  too (tools/bench_detect.py; for an ensemble the K heads' mean cosines, as the fused heads of
  ``export-index --run OUT_DIR --head`` give them).
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
import contextlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch

from xclass import components
from xclass.cli import main as xclass
from xclass.config import load_config
from xclass.data.reader import ParquetReader
from xclass.eval.embed import encode_batch, gather_head, load_encoder
from xclass.eval.ensemble import fuse_embeddings
from xclass.data.meta import load_meta, split_files
from xclass.train.members import read_members

from bench_traffic import traffic_rows  # noqa: E402 (tools/ is on the path when run as a script)
from task_splits import fewer_labels, validation_data  # noqa: E402


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


def embed_runs(runs: List[str], meta: Dict, data: str) -> Tuple[Dict[str, Dict[str, Dict]], List[Dict[str, Dict]]]:
    """({"xclass_trained" / "xclass_random_init": {split: embed()}} of the train and test splits,
    [each run's own trained {split: embed()}]); several runs are fused as ``export-index`` fuses
    them (:func:`xclass.eval.ensemble.fuse_embeddings`), the random init likewise from each run's
    own initial network (its seed)."""
    components.load_all()
    parts: Dict[str, List[Dict]] = {"xclass_trained": [], "xclass_random_init": []}
    for rd in runs:
        cfg = load_config(os.path.join(rd, "config.yaml"))
        torch.manual_seed(cfg.train.seed)
        random_enc = components.build_encoder(cfg.model, meta).eval()
        for name, enc in (("xclass_trained", load_encoder(rd, cfg, meta)), ("xclass_random_init", random_enc)):
            parts[name].append({s: embed(enc, cfg, meta, data, s) for s in ("train", "test")})
    if len(runs) == 1:
        return {name: ps[0] for name, ps in parts.items()}, parts["xclass_trained"]
    return ({name: {s: dict(ps[0][s], emb=fuse_embeddings([p[s]["emb"] for p in ps])) for s in ("train", "test")}
             for name, ps in parts.items()}, parts["xclass_trained"])


def head_vectors(run_dir: str, cfg: Any) -> Dict[str, Any]:
    """The trained head's class vectors (as ``export-index --head`` writes them: ``ids`` [R],
    ``vectors`` [R, d]) and the scale of its margin (``scale``: ``s``, None for a margin without one)."""
    from xclass.losses import MARGINS

    ids, vectors = gather_head(run_dir)
    scale = getattr(MARGINS.build(cfg.head.margin, **cfg.head.margin_params), "s", None)
    return {"ids": ids, "vectors": vectors.astype(np.float32), "scale": float(scale) if scale else None}


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
    ap.add_argument("--train-labels", type=int, default=0, metavar="N",
                    help="train on N of the training classes only (seeded by --seed; their closed-set test rows "
                         "go too, the open-set classes stay): how the result grows with the labels trained on")
    ap.add_argument("--ensemble", type=int, default=None, metavar="K",
                    help="train.ensemble=K (default: the config's): K member runs (train.seed = seed + 1000 k), "
                         "scored fused as export-index --run OUT_DIR writes them (the random init: K initial "
                         "networks, fused); 1 scores one run")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run_dir = os.path.join(a.out, "run")
    if a.validation or a.validation_classes:
        a.data = validation_data(a.data, a.validation, a.seed, a.out, a.validation_classes)
    if a.train_labels:
        a.data = fewer_labels(a.data, a.train_labels, a.seed, a.out)
    t0 = time.perf_counter()
    members = [] if a.ensemble is None else [f"train.ensemble={a.ensemble}"]
    with contextlib.redirect_stdout(sys.stderr):   # stdout carries the JSON rows only
        rc = xclass(["train", "--config", a.config, f"data.path={a.data}", f"train.out_dir={run_dir}",
                     "train.progress=false", f"train.seed={a.seed}", *members, *a.overrides])
    if rc:
        return rc
    train_s = time.perf_counter() - t0
    runs = read_members(run_dir) or [run_dir]
    cfg = load_config(os.path.join(runs[0], "config.yaml"))
    meta = load_meta(a.data)
    embs, own = embed_runs(runs, meta, a.data)
    if meta["task"] == "quic":
        heads = [dict(head_vectors(rd, cfg), test=own[k]["test"])
                 for k, rd in enumerate(runs)] if cfg.head.name == "margin" else None
        rows = traffic_rows(a.data, meta, embs, a.packets, a.seed, heads)
    else:
        rows = verification_rows(a.data, meta, embs)
    for r in rows:
        print(json.dumps({"task": meta["task"], "data": os.path.abspath(a.data), "config": a.config,
                          "overrides": a.overrides, "seed": a.seed, "train_seconds": round(train_s, 1),
                          **({"ensemble": len(runs)} if len(runs) > 1 else {}), **r}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
