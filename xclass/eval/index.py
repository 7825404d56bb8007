"""FAISS index building, atomic export with a manifest, and sharded search.

An exported index is a directory::

    manifest.json        format, spec, dim, metric, normalize, ntotal, per-shard file/ntotal/bytes/
                         sha256 (of the shard file), data_sha256 (ids + float32 vectors as
                         indexed), sources
    shard-00000.faiss    one faiss index per label shard; every shard is IndexIDMap-wrapped
    ...                  (or an IVF with its own ids), so search returns global ids directly

Cosine = inner product on L2-normalised vectors (stored vectors normalised at export, queries
at search). Kinds: ``flat`` (exact IP), ``hnsw`` (IndexHNSWFlat), ``ivfpq`` (IndexIVFPQ),
``ivfflat``, ``factory`` (any faiss ``index_factory`` string). torch is imported before faiss so
both share one OpenMP runtime.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

try:                         # import order decides the OpenMP runtime
    import torch  # noqa: F401
except ImportError:          # pragma: no cover
    pass
import faiss  # noqa: E402

FORMAT = "xclass-index/1"
KINDS = ("flat", "hnsw", "ivfpq", "ivfflat", "factory")


@dataclass(frozen=True)
class IndexSpec:
    """How to build and search an index. ``metric``: cosine | ip | l2. ``kind`` "factory": any
    index faiss' ``index_factory`` builds from the string ``factory`` (e.g. ``OPQ16_64,IVF4096,PQ16``
    or ``HNSW32,Flat``); one that cannot hold ids itself is wrapped in an ``IndexIDMap``."""

    kind: str = "flat"
    metric: str = "cosine"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int = 1024
    pq_m: int = 16
    pq_bits: int = 8
    nprobe: int = 32
    train_size: int = 100_000
    factory: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; known: {', '.join(KINDS)}")
        if (self.kind == "factory") != bool(self.factory):
            raise ValueError("an index factory string goes with kind 'factory' (and only with it)")
        if self.metric not in ("cosine", "ip", "l2"):
            raise ValueError(f"unknown metric {self.metric!r}; use cosine, ip or l2")

    @property
    def normalize(self) -> bool:
        return self.metric == "cosine"

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "l2"

    @property
    def needs_training(self) -> bool:
        """IVF kinds; a factory index is trained too (a no-op for one that needs none)."""
        return self.kind.startswith("ivf") or self.kind == "factory"


def prepare(x: np.ndarray, spec: IndexSpec) -> np.ndarray:
    """float32 C-contiguous copy, L2-normalised row-wise for cosine."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if spec.normalize:
        faiss.normalize_L2(x)
    return x


def new_index(d: int, spec: IndexSpec) -> faiss.Index:
    """Empty (possibly untrained) index with global-id support."""
    m = spec.faiss_metric
    if spec.kind == "factory":
        return _from_factory(d, spec.factory, m)
    if spec.kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlat(d, m))
    if spec.kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, spec.hnsw_m, m)
        base.hnsw.efConstruction = spec.ef_construction
        return faiss.IndexIDMap(base)
    quant = faiss.IndexFlat(d, m)
    if spec.kind == "ivfflat":
        idx = faiss.IndexIVFFlat(quant, d, spec.nlist, m)
    else:
        if d % spec.pq_m:
            raise ValueError(f"pq_m={spec.pq_m} must divide the dimension {d}")
        idx = faiss.IndexIVFPQ(quant, d, spec.nlist, spec.pq_m, spec.pq_bits, m)
    idx.own_fields = True
    quant.this.disown()      # the IVF owns its quantizer now
    return idx


def _from_factory(d: int, factory: str, metric: int) -> faiss.Index:
    try:
        idx = faiss.index_factory(d, factory, metric)
    except RuntimeError as exc:
        raise ValueError(f"index factory {factory!r} (d={d}): faiss cannot build it: "
                         f"{str(exc).strip().splitlines()[-1][:200]}") from None
    if faiss.try_extract_index_ivf(idx) is None and not isinstance(idx, faiss.IndexIDMap):
        idx = faiss.IndexIDMap(idx)    # keeps a reference to the wrapped index, as for the flat kind
    return idx


def train(index: faiss.Index, sample: np.ndarray, spec: IndexSpec, use_gpu: bool = False) -> None:
    """Train IVF and factory indexes on ``sample`` [m, d] (already prepared); no-op for flat/HNSW."""
    if not spec.needs_training:
        return
    if spec.kind == "factory":                       # the CPU trains every stage (pre-transforms included)
        if not index.is_trained:
            try:
                index.train(sample)
            except RuntimeError as exc:
                raise ValueError(f"index factory {spec.factory!r}: training on {len(sample)} vectors failed: "
                                 f"{str(exc).strip().splitlines()[-1][:200]}") from None
        return
    if len(sample) < spec.nlist:
        raise ValueError(f"IVF with nlist={spec.nlist} needs at least that many training "
                         f"vectors, got {len(sample)}")
    if use_gpu and gpu_available():
        # train the coarse quantizer's k-means on the GPU, keep the index on the CPU
        ivf = faiss.extract_index_ivf(index)
        clus = faiss.Clustering(ivf.d, ivf.nlist)
        gq = faiss.index_cpu_to_gpu(_gpu_res(), 0, faiss.IndexFlat(ivf.d, ivf.metric_type))
        clus.train(sample, gq)
        ivf.quantizer.add(faiss.vector_to_array(clus.centroids).reshape(ivf.nlist, ivf.d))
    index.train(sample)


def set_search_params(index: faiss.Index, spec: IndexSpec) -> None:
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(base, faiss.IndexHNSW):
        base.hnsw.efSearch = spec.ef_search
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        ivf.nprobe = spec.nprobe


_GPU_RES = None


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _gpu_res():
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    return _GPU_RES


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Clone a CPU index to GPU 0 (flat / IVF; HNSW, and what a factory string builds that faiss
    cannot clone, has no GPU form and stays on the CPU, with a note)."""
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(base, faiss.IndexHNSW):
        return index
    try:
        return faiss.index_cpu_to_gpu(_gpu_res(), 0, index)
    except RuntimeError as exc:
        print(f"[xclass] faiss has no GPU form of this index ({str(exc).strip().splitlines()[-1][:160]}); "
              "it is searched on the CPU", file=sys.stderr)
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    """GPU indexes must be converted before ``write_index`` (faiss#3198)."""
    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


def write_checked(index: faiss.Index, path: str, probe: np.ndarray, spec: IndexSpec) -> int:
    """Write to ``path + '.tmp'``, read back, check ntotal/dim/metric and that a probe search
    gives identical results, then rename atomically. Returns the file size in bytes."""
    index = to_cpu(index)
    tmp = path + ".tmp"
    faiss.write_index(index, tmp)
    back = faiss.read_index(tmp)
    for attr in ("ntotal", "d", "metric_type"):
        if getattr(back, attr) != getattr(index, attr):
            os.remove(tmp)
            raise RuntimeError(f"{path}: read-back {attr} {getattr(back, attr)} != "
                               f"{getattr(index, attr)}")
    set_search_params(index, spec)
    set_search_params(back, spec)
    k = min(10, max(index.ntotal, 1))
    Da, Ia = index.search(probe, k)
    Db, Ib = back.search(probe, k)
    if not (np.array_equal(Ia, Ib) and np.array_equal(Da, Db)):
        os.remove(tmp)
        raise RuntimeError(f"{path}: read-back search differs from the written index")
    os.replace(tmp, path)
    return os.path.getsize(path)


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(out_dir: str, manifest: dict) -> None:
    tmp = os.path.join(out_dir, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "manifest.json"))


def spec_from_dict(d: dict) -> IndexSpec:
    names = {f.name for f in dataclasses.fields(IndexSpec)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown index spec key(s) {sorted(unknown)}")
    return IndexSpec(**d)


def ids_of(index: faiss.Index) -> Optional[np.ndarray]:
    """The global ids stored in an IDMap index (None for other index types)."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return None
