"""Export embedding Parquet files (or arrays) to a sharded FAISS index directory.

Shard by shard: each source (e.g. ``labels-00000.parquet``) becomes one or more index shards
of at most ``shard_rows`` vectors; only one shard is in memory at a time. IVF kinds are trained
once on a random sample drawn across all sources, then every shard is a copy of the trained
empty index. The shards are built in a temp directory beside the output, each with a read-back
check, and moved in only when all are written (an export that fails leaves no shard and an old
index as it was); the manifest is written last, so a directory with a manifest is a complete
export.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
from typing import List, Optional, Sequence

import numpy as np

from xclass.data.writer import staging_dir
from xclass.eval import index as xi
from xclass.eval.io import Source, expand_sources, iter_batches, num_rows


def _name(src: Source) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else src.name


def _training_sample(sources, spec: xi.IndexSpec, batch_rows: int, seed: int) -> np.ndarray:
    total = sum(num_rows(s) for s in sources)
    frac = min(1.0, spec.train_size / max(total, 1))
    rng = np.random.default_rng(seed)
    parts = []
    for src in sources:
        for b in iter_batches(src, batch_rows):
            keep = rng.random(len(b.emb)) < frac
            parts.append(xi.prepare(b.emb[keep], spec))
    return np.concatenate(parts)


class _ShardWriter:
    def __init__(self, out_dir: str, spec: xi.IndexSpec, trained: Optional[object]):
        self.out_dir, self.spec, self.trained = out_dir, spec, trained
        self.shards: List[dict] = []
        self.index = None
        self.probe = None
        self.id_min = self.id_max = None

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self.index is None:
            self.index = (xi.faiss.clone_index(self.trained) if self.trained is not None
                          else xi.new_index(x.shape[1], self.spec))
            self.probe = x[:5].copy()
            self.id_min, self.id_max = int(ids.min()), int(ids.max())
        self.index.add_with_ids(x, ids)
        self.id_min, self.id_max = min(self.id_min, int(ids.min())), max(self.id_max, int(ids.max()))

    @property
    def rows(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def flush(self) -> None:
        if self.index is None:
            return
        name = f"shard-{len(self.shards):05d}.faiss"
        path = os.path.join(self.out_dir, name)
        size = xi.write_checked(self.index, path, self.probe, self.spec)
        self.shards.append({"file": name, "ntotal": int(self.index.ntotal), "bytes": size,
                            "sha256": xi.file_sha256(path), "id_min": self.id_min, "id_max": self.id_max})
        self.index = None


def export_index(sources: Sequence, out_dir: str, spec: xi.IndexSpec = xi.IndexSpec(), *,
                 batch_rows: int = 65536, shard_rows: Optional[int] = None,
                 use_gpu: bool = False, overwrite: bool = False, seed: int = 0) -> dict:
    """Build and write the index; returns the manifest dict.

    sources: Parquet paths / directories / globs or :class:`~xclass.eval.io.ArraySource`;
    columns ``id`` int64 and ``embedding`` fixed_size_list<float32>[d].
    """
    sources = expand_sources(sources)
    if os.path.exists(os.path.join(out_dir, "manifest.json")) and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds an index; pass --overwrite to replace it")
    tmp = staging_dir(out_dir)
    try:
        manifest = _build(sources, tmp, spec, batch_rows, shard_rows, use_gpu, seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # an old index in out_dir is left as it was
        raise
    _publish(tmp, out_dir, manifest)
    return manifest


def _build(sources: List[Source], tmp: str, spec: xi.IndexSpec, batch_rows: int, shard_rows: Optional[int],
           use_gpu: bool, seed: int) -> dict:
    """Write the shards of ``sources`` into the staging directory ``tmp``; returns the manifest."""
    trained = None
    if spec.needs_training:
        sample = _training_sample(sources, spec, batch_rows, seed)
        trained = xi.new_index(sample.shape[1], spec)
        xi.train(trained, sample, spec, use_gpu)
        del sample
    writer = _ShardWriter(tmp, spec, trained)
    digest, dim, seen = hashlib.sha256(), None, 0
    for src in sources:
        for b in iter_batches(src, batch_rows):
            if dim is None:
                dim = b.emb.shape[1]
            elif b.emb.shape[1] != dim:
                raise ValueError(f"{_name(src)}: embedding dimension {b.emb.shape[1]} differs "
                                 f"from {dim} in earlier rows/files")
            x = xi.prepare(b.emb, spec)
            digest.update(b.ids.tobytes())
            digest.update(x.tobytes())
            start = 0
            while start < len(x):        # split the batch where a shard fills up
                room = len(x) - start if shard_rows is None else shard_rows - writer.rows
                writer.add(b.ids[start:start + room], x[start:start + room])
                start += room
                if shard_rows is not None and writer.rows >= shard_rows:
                    writer.flush()
            seen += len(x)
        if shard_rows is None:
            writer.flush()               # one shard per source file
    writer.flush()
    return {"format": xi.FORMAT, "spec": spec.__dict__.copy(), "dim": int(dim),
            "metric": spec.metric, "normalize": spec.normalize, "dtype": "float32",
            "ntotal": int(seen), "shards": writer.shards, "data_sha256": digest.hexdigest(),
            "sources": [_name(s) for s in sources]}


def _publish(tmp: str, out_dir: str, manifest: dict) -> None:
    """Move the finished shards from ``tmp`` into ``out_dir`` (an old index there is removed,
    manifest first) and write the manifest last: a directory with a manifest is a complete export."""
    os.makedirs(out_dir, exist_ok=True)
    old = os.path.join(out_dir, "manifest.json")
    if os.path.exists(old):
        os.remove(old)
    for f in glob.glob(os.path.join(out_dir, "shard-*.faiss")):
        os.remove(f)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    os.rmdir(tmp)
    xi.write_manifest(out_dir, manifest)
