"""Open an exported index directory (validating it) and search all shards with a top-k merge."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List, Optional

import numpy as np

from xclass.eval import index as xi
from xclass.eval.flat import TorchFlat
from xclass.eval.knn import GPU_MAX_K, merge_topk, search_k_limited

faiss = xi.faiss


class IndexError_(ValueError):
    """A corrupted, incomplete or mismatched index directory."""


def _fail(path: str, msg: str):
    raise IndexError_(f"{path}: {msg}")


def _confined(root: str, name: object) -> str:
    """``root/name`` for a manifest's shard file name, refused when it is not a plain relative
    path that stays inside the index directory (``../x``, absolute paths, symlinks out)."""
    mpath = os.path.join(root, "manifest.json")
    if not isinstance(name, str) or not name or os.path.isabs(name):
        _fail(mpath, f"shard file {name!r} must be a relative path inside the index directory")
    full = os.path.realpath(os.path.join(root, name))
    top = os.path.realpath(root)
    if os.path.commonpath([full, top]) != top:
        _fail(mpath, f"shard file {name!r} points outside the index directory; refused")
    return os.path.join(root, name)


class ShardedIndex:
    """All shards of an exported index. ``search(q, k)`` -> (D [n, k], I [n, k] global ids)."""

    def __init__(self, path: str, manifest: dict, shards: List, spec: xi.IndexSpec,
                 use_gpu: bool = False, backend: str = "auto"):
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
        self.path, self.manifest, self.spec = path, manifest, spec
        # CPU flat shards: torch GEMM + topk beats faiss' heap selection ("auto" picks it)
        self.backend = "torch" if (backend != "faiss" and spec.kind == "flat") else "faiss"
        self.cpu_shards = shards
        self._parts: dict = {}
        self._torch: dict = {}       # shard position -> TorchFlat (zero-copy view, cached norms)
        self.use_gpu = use_gpu and xi.gpu_available()
        self.torch_device = search_device(use_gpu, self.use_gpu)
        self.shards = [xi.to_gpu(s) for s in shards] if self.use_gpu else shards
        for s in self.shards + self.cpu_shards:
            xi.set_search_params(s, spec)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def ntotal(self) -> int:
        return int(self.manifest["ntotal"])

    @classmethod
    def open(cls, path: str, *, mmap: bool = True, use_gpu: bool = False,
             ef_search: Optional[int] = None, nprobe: Optional[int] = None,
             check_norms: bool = True, backend: str = "auto", verify: bool = True) -> "ShardedIndex":
        """Open an exported index directory. ``verify``: check each shard file against the
        manifest's SHA-256 (one read of every file; manifests without it are not checked), so
        a damaged or altered shard is refused before faiss reads it."""
        mpath = os.path.join(path, "manifest.json")
        if not os.path.isfile(mpath):
            _fail(path, "no manifest.json: not an exported xclass index (or an interrupted export)")
        try:
            with open(mpath) as f:
                man = json.load(f)
        except ValueError as exc:  # JSON or UTF-8 decoding
            _fail(mpath, f"corrupted manifest ({str(exc)[:200]})")
        if not isinstance(man, dict):
            _fail(mpath, "corrupted manifest (not a JSON object)")
        for key in ("format", "spec", "dim", "ntotal", "shards"):
            if key not in man:
                _fail(mpath, f"manifest lacks key {key!r}")
        if man["format"] != xi.FORMAT:
            _fail(mpath, f"format {man['format']!r}, expected {xi.FORMAT!r}")
        spec = xi.spec_from_dict(man["spec"])
        over = {k: v for k, v in (("ef_search", ef_search), ("nprobe", nprobe)) if v is not None}
        spec = dataclasses.replace(spec, **over)
        shards = [cls._load_shard(path, sh, man, spec, mmap, verify) for sh in man["shards"]]
        if sum(s.ntotal for s in shards) != man["ntotal"]:
            _fail(path, "shard sizes do not add up to the manifest's ntotal")
        if check_norms and spec.normalize:
            cls._check_norms(path, shards, exact=spec.kind in ("flat", "hnsw"))
        return cls(path, man, shards, spec, use_gpu, backend)

    @staticmethod
    def _load_shard(path: str, sh: dict, man: dict, spec: xi.IndexSpec, mmap: bool, verify: bool = True):
        f = _confined(path, sh.get("file") if isinstance(sh, dict) else None)
        if not os.path.isfile(f):
            _fail(f, "shard file listed in the manifest is missing")
        if os.path.getsize(f) != sh.get("bytes", os.path.getsize(f)):
            _fail(f, f"size {os.path.getsize(f)} != {sh['bytes']} bytes in the manifest (truncated?)")
        if verify and "sha256" in sh and xi.file_sha256(f) != sh["sha256"]:
            _fail(f, "SHA-256 differs from the manifest's: the shard file was damaged or changed after export")
        flags = (faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        try:
            idx = faiss.read_index(f, flags)
        except RuntimeError as exc:
            _fail(f, f"corrupted faiss index ({str(exc).splitlines()[0]})")
        if idx.d != man["dim"]:
            _fail(f, f"dimension {idx.d} != manifest dim {man['dim']}")
        if idx.ntotal != sh["ntotal"]:
            _fail(f, f"{idx.ntotal} vectors != {sh['ntotal']} in the manifest")
        if idx.metric_type != spec.faiss_metric:
            _fail(f, f"metric type {idx.metric_type} does not match metric {spec.metric!r}")
        has_ids = isinstance(idx, faiss.IndexIDMap) or faiss.try_extract_index_ivf(idx) is not None
        if not has_ids:
            _fail(f, "index has no id map (expected IndexIDMap or IVF with ids)")
        return idx

    @staticmethod
    def _check_norms(path: str, shards, n: int = 16, exact: bool = True) -> None:
        """Refuse a cosine index whose stored vectors are not unit norm (flat / HNSW only,
        ``exact``: PQ codes, and what a factory string may build, are lossy and cannot be checked
        this way)."""
        for s in shards if exact else ():
            if not isinstance(s, faiss.IndexIDMap) or s.ntotal == 0:
                continue
            inner = faiss.downcast_index(s.index)
            pick = np.linspace(0, s.ntotal - 1, min(n, s.ntotal)).astype(np.int64)
            v = np.stack([inner.reconstruct(int(i)) for i in pick])
            dev = np.abs(np.linalg.norm(v, axis=1) - 1).max()
            if dev > 1e-3:
                _fail(path, f"metric is cosine but stored vectors have norms off 1 by {dev:.3g}")

    def label_ids(self) -> Optional[np.ndarray]:
        """Sorted global ids held by the index [ntotal] int64, read from the shards' id maps
        (cached); None when a shard keeps its ids elsewhere (IVF: use the manifest ranges)."""
        if not hasattr(self, "_label_ids"):
            parts = [xi.ids_of(s) for s in self.cpu_shards]
            self._label_ids = None if any(p is None for p in parts) else \
                np.sort(np.concatenate(parts + [np.zeros(0, np.int64)]))
        return self._label_ids

    def id_ranges(self) -> np.ndarray:
        """[n_shards, 2] inclusive (id_min, id_max) per non-empty shard, from the manifest."""
        r = [(sh["id_min"], sh["id_max"]) for sh in self.manifest["shards"]
             if sh.get("ntotal", 0) and "id_min" in sh]
        return np.asarray(r, np.int64).reshape(-1, 2)

    def prepare_queries(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != self.dim:
            _fail(self.path, f"query dimension {q.shape[-1] if q.ndim else '?'} != index dim {self.dim}")
        return xi.prepare(q, self.spec)

    def search(self, q: np.ndarray, k: int):
        """q [n, d] raw queries (normalised here for cosine) -> (D, I) [n, k]."""
        q = self.prepare_queries(q)
        Ds, Is = [], []
        for j, (gpu_s, cpu_s) in enumerate(zip(self.shards, self.cpu_shards)):
            D, I = self._search_shard(j, gpu_s, cpu_s, q, min(k, max(gpu_s.ntotal, 1)))
            Ds.append(D)
            Is.append(I)
        return merge_topk(Ds, Is, k, self.spec.higher_is_better)

    def _search_shard(self, j, s, cpu_s, q, k):
        if self.backend == "torch" and not self.use_gpu and s.ntotal:
            if j not in self._torch:
                self._torch[j] = TorchFlat(_flat_vectors(cpu_s), xi.ids_of(cpu_s),
                                           self.spec.higher_is_better, device=self.torch_device)
            return self._torch[j].search(q, k)
        if not self.use_gpu or k <= GPU_MAX_K or s is cpu_s:
            return s.search(q, k)
        if self.spec.kind != "flat":
            return cpu_s.search(q, k)      # IVF on GPU cannot return > 2048: exact CPU path
        key = (id(cpu_s), k // GPU_MAX_K)
        if key not in self._parts:           # build the GPU sub-indexes once per shard and k range
            self._parts[key] = _gpu_flat_parts(cpu_s, self.spec, k)
        return search_k_limited(self._parts[key], cpu_s.search, q, k,
                                GPU_MAX_K, self.spec.higher_is_better)[:2]


def search_device(want_gpu: bool, faiss_gpu: bool, cuda: Optional[bool] = None) -> str:
    """Device of the torch flat search: ``--gpu`` picks faiss' GPU index when faiss has GPUs
    (``faiss_gpu``), else the exact torch search on the CUDA device, else the CPU."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return "cuda" if want_gpu and not faiss_gpu and cuda else "cpu"


def _flat_vectors(idmap) -> np.ndarray:
    """Zero-copy [ntotal, d] float32 view of an IDMap(IndexFlat)'s storage (works on mmap)."""
    flat = faiss.downcast_index(idmap.index)
    codes = faiss.vector_to_array(flat.codes) if not hasattr(flat, "get_xb") else \
        faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
    return np.asarray(codes).view(np.float32).reshape(flat.ntotal, flat.d)


def _gpu_flat_parts(cpu_s, spec: xi.IndexSpec, k: int):
    """Split a flat shard into GPU sub-indexes so each needs at most GPU_MAX_K results."""
    ids = xi.ids_of(cpu_s)
    x = faiss.downcast_index(cpu_s.index).reconstruct_n(0, cpu_s.ntotal)
    n_parts = max(2, 2 * -(-k // GPU_MAX_K))
    parts = []
    for sl in np.array_split(np.arange(cpu_s.ntotal), n_parts):
        sub = xi.to_gpu(faiss.IndexFlat(x.shape[1], spec.faiss_metric))
        sub.add(x[sl])
        parts.append(lambda q, kk, sub=sub, sid=ids[sl]: _mapped(sub.search(q, kk), sid))
    return parts


def _mapped(res, sid):
    D, I = res
    return D, np.where(I >= 0, sid[np.clip(I, 0, None)], -1)
