"""Choose fusion weights on a validation split, never on the test split.

    # 1. a validation dataset: 10% of the training rows (by a hash of the row id) become its test split
    python tools/xmc_fusion_grid.py split --data runs/data/wordnet --out runs/data/wordnet_val
    # 2. train the recipe on it and evaluate (writes RUN_eval/: label index, test embeddings)
    python tools/bench_xmc.py --data runs/data/wordnet_val --work runs/val --methods dual_tfidf
    # 3. one JSON row per weight setting (percent)
    python tools/xmc_fusion_grid.py grid --run runs/val/wordnet_tfidf_dual --data runs/data/wordnet_val
    # or TF-IDF kNN + the linear ranker's rankings (no dual run)
    python -m xclass.cli.xmc ranker --data runs/data/wordnet_val --out runs/val/ranker
    python tools/xmc_fusion_grid.py grid --data runs/data/wordnet_val --rankings ranker=runs/val/ranker/rankings.parquet

The sources are computed once and fused for every setting (xclass.eval.fusion).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRID = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)]
RANKINGS_GRID = [(1, 0), (0, 1), (1, 1), (2, 1), (3, 1), (5, 1), (10, 1)]  # (rankings source, tfidf_knn)


def split(data: str, out: str, fraction: int = 10) -> None:
    """``out``: train = the training rows whose id hash is not 0 mod ``fraction``, test = the rest."""
    import pyarrow.parquet as pq

    if os.path.exists(out):
        sys.exit(f"{out}: exists")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t = pq.read_table(os.path.join(data, "train.parquet"))
    ids = t.column("id").to_numpy().astype(np.uint64)
    val = (ids * np.uint64(2654435761) % np.uint64(2 ** 32)) % np.uint64(fraction) == 0
    pq.write_table(t.filter(~val), os.path.join(tmp, "train.parquet"))
    pq.write_table(t.filter(val), os.path.join(tmp, "test.parquet"))
    for f in os.listdir(data):
        if f not in ("train.parquet", "test.parquet", "meta.json") and os.path.isfile(os.path.join(data, f)):
            shutil.copy(os.path.join(data, f), tmp)
    meta = json.load(open(os.path.join(data, "meta.json")))
    for name, n in (("train", int((~val).sum())), ("test", int(val.sum()))):
        meta["splits"][name]["rows"] = n
        meta["splits"][name].pop("id_range", None)
    json.dump(meta, open(os.path.join(tmp, "meta.json"), "w"), indent=1)
    os.replace(tmp, out)


def grid(run: str, data: str, k: int = 50, rankings: str = "") -> None:
    from xclass.eval.metrics import Ranking, inverse_propensity, xmc_metrics
    from xclass.eval import fusion
    from xclass.eval.tfidf import read_split

    n_labels = fusion.read_meta_num_classes(data)
    _, Ltr, _ = read_split(os.path.join(data, "train.parquet"))
    _, Lte, _ = read_split(os.path.join(data, "test.parquet"))
    inv = inverse_propensity(np.bincount(Ltr.indices, minlength=n_labels), Ltr.n_rows)
    nbrs = fusion.tfidf_neighbours(data, k)

    def show(weights, top):
        m = xmc_metrics(Ranking.build(top, Lte, inv), (1, 3, 5))
        print(json.dumps({"weights": weights, **{key: round(100 * m[key], 2) for key in
                                                  ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")},
                          "unit": "percent", "data": data}), flush=True)
    if not run:  # TF-IDF kNN + one rankings source
        name, _, path = rankings.partition("=")
        extra = fusion.data_rankings(data, {name: path})
        for w in RANKINGS_GRID:
            weights = {name: float(w[0]), "tfidf_knn": float(w[1])}
            show(weights, fusion.fuse_data(data, weights, extra, k, 10, nbrs)[1])
        return
    # fuse_run with every weight > 0 computes (and caches on disk) the embeddings once
    for w in GRID:
        weights = dict(zip(("dual", "emb_knn", "tfidf_knn"), map(float, w)))
        show(weights, fusion.fuse_run(run, run + "_eval", weights, k, 10, data, nbrs)[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    g = sub.add_parser("grid")
    g.add_argument("--run", default="", help="a dual run (sources dual, emb_knn, tfidf_knn)")
    g.add_argument("--data", required=True)
    g.add_argument("--rankings", default="", help="without --run: NAME=PATH, a rankings source fused with TF-IDF kNN")
    a = p.parse_args()
    if a.cmd == "split":
        split(a.data, a.out)
    else:
        if not a.run and "=" not in a.rankings:
            sys.exit("grid: give --run or --rankings NAME=PATH")
        grid(a.run, a.data, rankings=a.rankings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
