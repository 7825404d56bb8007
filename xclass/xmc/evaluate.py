"""Evaluate a trained XMC run through xclass's export + eval API (the same steps as
``xclass export-index --run RUN --head`` / ``--split test`` then ``xclass evaluate --protocol xmc``).

Metric of the label index: ``cosine`` for dual_decoupled with ``normalize`` (its training score),
``ip`` for ova (its classifier score up to the shared bias) or an unnormalised dual head."""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import xclass.xmc  # noqa: F401  (registers the XMC heads before export builds them)
from xclass.eval import evaluate as ev
from xclass.eval.export import export_index
from xclass.eval.index import IndexSpec
from xclass.eval.searcher import ShardedIndex
from xclass.export import embed_split, export_head, load_run


def run_metric(run_dir: str) -> str:
    cfg = load_run(run_dir)
    p = dict(cfg.head.params or {})
    if cfg.head.name == "dual_decoupled":
        return "cosine" if p.get("normalize", True) else "ip"
    if cfg.head.name == "ova":
        return "cosine" if p.get("normalize", False) else "ip"
    return "cosine"


def evaluate_run(run_dir: str, work: str, ks: Sequence[int] = (1, 3, 5), a: float = 0.55, b: float = 1.5,
                 data_path: Optional[str] = None, progress: bool = False) -> Dict[str, float]:
    """Export the label index and the test embeddings of ``run_dir`` under ``work``; XMC metrics."""
    cfg = load_run(run_dir)
    data = data_path or cfg.data.path
    spec = IndexSpec(kind="flat", metric=run_metric(run_dir))
    labels = export_head(run_dir, os.path.join(work, "label_embeddings"))
    export_index(labels, os.path.join(work, "label_index"), spec, overwrite=True)
    queries = embed_split(run_dir, "test", os.path.join(work, "test_embeddings.parquet"), data_path=data)
    index = ShardedIndex.open(os.path.join(work, "label_index"))
    n_labels = max(sh["id_max"] for sh in index.manifest["shards"]) + 1
    inv = ev.propensity_from_train(os.path.join(data, "train.parquet"), n_labels, a, b)
    out = ev.evaluate_xmc(index, queries, ks, inv_prop=inv, progress=progress)
    out["metric"] = spec.metric
    return out
