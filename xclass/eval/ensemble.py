"""Embeddings of several trained runs fused into one (``export-index --run A --run B ...``).

Each run encodes the same split; every run's rows are L2-normalised, the K parts are
concatenated and divided by sqrt(K). The fused rows are unit vectors and the cosine of two fused
rows is the **mean of the K runs' cosines**: score-level fusion with equal weights, which the
index, the 1-NN protocols and verification then use unchanged. Runs trained with different
seeds (or encoders) err in different places, so the mean cosine ranks neighbours better than
any one run; on new classes (open-set identification) this is where an ensemble pays most.

Shapes: each run's embeddings ``[n, d_k]`` (the runs may differ in ``d_k`` and encoder); the
fused ``[n, sum d_k]`` float32, rows in file order.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from xclass.config_types import ConfigError

#: Parquet schema metadata key of a fused file: the JSON list of the runs' dimensions, in order
DIMS_KEY = "xclass.ensemble_dims"


def fuse_embeddings(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``parts``: K arrays ``[n, d_k]`` of the same rows -> ``[n, sum d_k]`` float32, each part
    row-normalised (a zero row stays zero) and the whole divided by sqrt(K), so
    ``fused_i . fused_j = mean_k cos_k(i, j)`` for rows without zero parts."""
    if not parts:
        raise ValueError("fuse_embeddings needs at least one part")
    n = parts[0].shape[0]
    if any(p.ndim != 2 or p.shape[0] != n for p in parts):
        raise ValueError(f"fuse_embeddings: parts of shapes {[p.shape for p in parts]}; every part must be [n, d]")
    unit = [p.astype(np.float32) / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12).astype(np.float32)
            for p in parts]
    return (np.concatenate(unit, axis=1) / np.float32(np.sqrt(len(parts)))).astype(np.float32)


class FusedEncoder(torch.nn.Module):
    """K encoders of one input dict -> their outputs fused as :func:`fuse_embeddings` fuses rows
    (each L2-normalised, concatenated, / sqrt(K)): ``[B, sum d_k]`` float32, one model for an
    ensemble (``export-model --run ENSEMBLE_DIR``)."""

    def __init__(self, encoders: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(encoders)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [torch.nn.functional.normalize(m(inputs).float(), dim=1, eps=1e-12) for m in self.members]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))


def check_same_data(run_dirs: Sequence[str], data_path: Optional[str]) -> None:
    """Without ``data_path`` every run encodes its own training data, so all must name the same
    dataset directory (else one error naming two runs and their data); all runs share a task."""
    from xclass.eval.embed import load_run

    cfgs = [load_run(r) for r in run_dirs]
    for run, cfg in zip(run_dirs[1:], cfgs[1:]):
        if cfg.data.task != cfgs[0].data.task:
            raise ConfigError(f"--run {run} is a {cfg.data.task} run and --run {run_dirs[0]} a "
                              f"{cfgs[0].data.task} run: an ensemble fuses runs of one task")
        if data_path is None and os.path.abspath(cfg.data.path) != os.path.abspath(cfgs[0].data.path):
            raise ConfigError(f"--run {run} was trained on {cfg.data.path} and --run {run_dirs[0]} on "
                              f"{cfgs[0].data.path}: pass --data DIR to encode one dataset with every run")


def embed_ensemble(run_dirs: Sequence[str], split: str, out_path: str, data_path: Optional[str] = None,
                   **encode_kw: Any) -> str:
    """Encode ``split`` with every run (:func:`xclass.eval.embed.encode_split`, the same
    ``encode_kw`` for each), fuse (:func:`fuse_embeddings`) and write one embedding Parquet with
    the first run's ``id`` and label columns. Runs are checked first (:func:`check_same_data`);
    rows must come back with the same ids in the same order."""
    from xclass.eval.embed import encode_split, write_embeddings

    check_same_data(run_dirs, data_path)
    ids, first, labels = encode_split(run_dirs[0], split, data_path=data_path, **encode_kw)
    parts = [first]
    for run in run_dirs[1:]:
        other_ids, emb, _ = encode_split(run, split, data_path=data_path, **encode_kw)
        if not np.array_equal(other_ids, ids):
            raise ConfigError(f"--run {run}: its {split} rows differ from --run {run_dirs[0]}'s")
        parts.append(emb)
    return write_embeddings(out_path, ids, fuse_embeddings(parts), labels, dims_metadata(parts))


def dims_metadata(parts: Sequence[np.ndarray]) -> Dict[str, str]:
    """The schema metadata that marks a fused file: ``{DIMS_KEY: "[d_1, ..., d_K]"}``."""
    return {DIMS_KEY: json.dumps([int(p.shape[1]) for p in parts])}


def read_ensemble_dims(paths: Sequence[str]) -> Optional[List[int]]:
    """The runs' dimensions recorded in fused Parquet files (``paths``: files, directories or
    globs), None when none is fused; files that disagree are an error naming one."""
    import pyarrow.parquet as pq

    from xclass.eval.io import expand_sources

    found = {}
    for f in expand_sources(list(paths)):
        meta = pq.read_schema(str(f)).metadata or {}
        raw = meta.get(DIMS_KEY.encode())
        found[str(f)] = _parse_dims(str(f), raw) if raw else None
    values = list(found.values())
    for f, dims in found.items():
        if dims != values[0]:
            raise ValueError(f"{f}: fused from runs of dimensions {dims}, but {next(iter(found))} from {values[0]}; "
                             "score files exported from the same runs")
    return values[0] if values else None


def _parse_dims(path: str, raw: bytes) -> List[int]:
    """The ``DIMS_KEY`` value of ``path``: a JSON list of two or more positive integers."""
    try:
        dims = json.loads(raw)
    except ValueError:
        dims = None
    if not (isinstance(dims, list) and len(dims) >= 2 and
            all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
        raise ValueError(f"{path}: schema metadata {DIMS_KEY} is {raw[:80]!r}, not a list of the runs' "
                         "dimensions (export-index --run A --run B ... writes it)")
    return dims


def paired_dims(queries: str, gallery: str) -> List[int]:
    """The runs' dimensions of fused query and gallery files (:func:`read_ensemble_dims`); both
    must be fused, from runs of the same dimensions, else an error naming the file."""
    q, g = read_ensemble_dims([queries]), read_ensemble_dims([gallery])
    for path, dims in ((queries, q), (gallery, g)):
        if dims is None:
            raise ValueError(f"{path}: not fused from several runs (export-index --run A --run B ...); "
                             "--ensemble-mean-prob needs fused queries and gallery")
    if q != g:
        raise ValueError(f"{gallery}: fused from runs of dimensions {g}, the queries {queries} from {q}")
    return q


def mean_prob_share(q: np.ndarray, nbr: np.ndarray, labels: np.ndarray, dims: Sequence[int], scale: float) -> np.ndarray:
    """A deep ensemble's open-set score. ``q`` [b, D] fused queries, ``nbr`` [b, K, D] the fused
    vectors of their K nearest gallery rows (best first), ``labels`` [b, K] their labels (-1: no
    row), ``dims`` the runs' dimensions (sum D) -> [b]: over the runs, the mean of each run's
    share of the softmax weights ``exp(scale * cos_k)`` on the 1-NN's label, ``cos_k`` the run's
    own cosine (its part of each vector, re-normalised). With a fused head as the gallery and K at
    least the class count, the mean of the runs' probabilities of the predicted class."""
    from xclass.eval.ident_eval import softmax_share

    if sum(dims) != q.shape[1] or nbr.shape[-1] != q.shape[1]:
        raise ValueError(f"fused vectors of dimension {q.shape[1]} / {nbr.shape[-1]} do not split into runs of {list(dims)}")
    out = np.zeros(len(q), np.float64)
    start = 0
    for d in dims:
        qk = q[:, start:start + d].astype(np.float64)
        gk = nbr[:, :, start:start + d].astype(np.float64)
        cos = np.einsum("bd,bkd->bk", qk, gk) / np.maximum(
            np.linalg.norm(qk, axis=1)[:, None] * np.linalg.norm(gk, axis=2), 1e-12)
        out += softmax_share(cos, labels, scale)     # the 1-NN's label is column 0 in every run
        start += d
    return out / len(dims)


def export_head_ensemble(run_dirs: Sequence[str], out_dir: str) -> list:
    """The K runs' heads as one set of fused class vectors (``labels-XXXXX.parquet``: ``id`` /
    ``label`` the class id, ``embedding`` [R, sum d_k]), fused as :func:`fuse_embeddings` fuses
    rows: a fused query's cosine to a fused class vector is the mean of the K runs' cosines, so
    ``scale`` times it is the mean of the runs' logits (a logit-averaging ensemble of the
    classifiers). Every run must have the same class rows (one dataset, the same sub-centre
    count). Runs saved on the same ranks are fused shard by shard (one shard of each run in
    memory, a file per shard); otherwise each run's head is gathered into memory (R x d_k floats
    per run) and written as one file."""
    from xclass.eval.embed import class_table, gather_head, head_layout, head_shards, remove_stale_labels
    from xclass.eval.io import write_parquet_atomic

    check_same_data(run_dirs, None)
    os.makedirs(out_dir, exist_ok=True)
    layouts = [head_layout(r) for r in run_dirs]
    if all(lay == layouts[0] for lay in layouts):
        groups = zip(*(head_shards(r) for r in run_dirs))      # the r-th shard of every run
    else:
        groups = iter([[(0, *gather_head(run)) for run in run_dirs]])
    files = []
    for shards in groups:
        ids = shards[0][1]
        for run, (_, run_ids, _) in zip(run_dirs[1:], shards[1:]):
            if not np.array_equal(run_ids, ids):
                raise ConfigError(f"--run {run}: its head's class rows differ from --run {run_dirs[0]}'s "
                                  f"({len(run_ids)} against {len(ids)} rows)")
        parts = [w for _, _, w in shards]
        f = os.path.join(out_dir, f"labels-{shards[0][0]:05d}.parquet")
        write_parquet_atomic(class_table(ids, fuse_embeddings(parts)).replace_schema_metadata(dims_metadata(parts)), f)
        files.append(f)
    return remove_stale_labels(out_dir, files)

