"""FAISS export/search vs exact numpy top-k (tie tolerant), round trips, k-limit split, errors."""
import hashlib
import json
import os

import numpy as np
import pytest

from tests.eval.conftest import clustered, write_embeddings
from xclass.eval.export import export_index
from xclass.eval.index import IndexSpec, faiss, file_sha256, new_index, prepare
from xclass.eval.io import ArraySource
from xclass.eval.knn import exact_topk, merge_topk, same_neighbours, search_k_limited
from xclass.eval.searcher import IndexError_, ShardedIndex


def _exact_np(q, x, ids, k, metric="cosine"):
    """Independent reference: full score matrix + argsort."""
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    S = q.astype(np.float64) @ x.T.astype(np.float64)
    o = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, o, 1), ids[o]


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_flat_sharded_equals_exact(tmp_path, metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    ids = rng.permutation(10_000)[:3000].astype(np.int64)      # non-contiguous global ids
    files = [write_embeddings(tmp_path / f"labels-{i:05d}.parquet", ids[s], x[s])
             for i, s in enumerate(np.array_split(np.arange(3000), 3))]
    man = export_index(files, str(tmp_path / "idx"), IndexSpec("flat", metric), shard_rows=700,
                       batch_rows=256)
    # shards fill to shard_rows across file boundaries: 4 x 700 + 200
    assert [s["ntotal"] for s in man["shards"]] == [700] * 4 + [200] and man["ntotal"] == 3000
    q = rng.normal(size=(50, 16)).astype(np.float32)
    D, I = ShardedIndex.open(str(tmp_path / "idx")).search(q, 20)
    Dr, Ir = _exact_np(q, x, ids, 20, metric)
    assert same_neighbours(Dr, Ir, D, I, rtol=1e-4, atol=1e-4).all()


def test_tie_tolerant_comparison_with_duplicates(tmp_path):
    # duplicated vectors give exact ties: ids may differ, scores may not
    rng = np.random.default_rng(1)
    base = rng.normal(size=(100, 8)).astype(np.float32)
    x = np.concatenate([base, base])
    ids = np.arange(200)
    export_index([ArraySource(x, ids)], str(tmp_path / "i"), IndexSpec("flat"))
    q = base[:10] + 0.01 * rng.normal(size=(10, 8)).astype(np.float32)
    D, I = ShardedIndex.open(str(tmp_path / "i")).search(q, 5)
    Dr, Ir = _exact_np(q, x, ids, 5)
    assert same_neighbours(Dr, Ir, D, I, rtol=1e-4, atol=1e-4).all()
    # and the comparator does fail on a real difference
    I2 = I.copy()
    I2[0, 0] = 199 if I2[0, 0] != 199 else 198
    D2 = D.copy()
    D2[0, 0] -= 0.5
    assert not same_neighbours(Dr, Ir, D2, I2)[0]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfflat", "ivfpq"])
def test_round_trip_and_recall(tmp_path, kind):
    x, _ = clustered(4000, 32, 40, seed=2)
    ids = np.arange(4000, dtype=np.int64) * 5
    spec = IndexSpec(kind, nlist=16, pq_m=16, pq_bits=6, nprobe=8, train_size=4000, ef_search=64)
    export_index([ArraySource(x, ids)], str(tmp_path / "i"), spec)
    q, _ = clustered(100, 32, 40, seed=2)
    a = ShardedIndex.open(str(tmp_path / "i"), mmap=True)
    b = ShardedIndex.open(str(tmp_path / "i"), mmap=False)
    Da, Ia = a.search(q, 10)
    Db, Ib = b.search(q, 10)
    assert np.array_equal(Ia, Ib) and np.array_equal(Da, Db)         # bit-identical reads
    # the in-memory index before writing gives the same answer as the file
    mem = new_index(32, spec)
    if spec.needs_training:
        from xclass.eval.export import _training_sample
        mem.train(_training_sample([ArraySource(x, ids)], spec, 65536, 0))
    mem.add_with_ids(prepare(x, spec), ids)
    from xclass.eval.index import set_search_params
    set_search_params(mem, spec)
    Dm, Im = mem.search(prepare(q, spec), 10)
    assert np.array_equal(Im, Ia)
    _, Ir = _exact_np(q, x, ids, 10)
    recall = np.mean([len(set(r) & set(e)) / 10 for r, e in zip(Ia, Ir)])
    assert recall >= {"flat": 0.999, "hnsw": 0.95, "ivfflat": 0.9, "ivfpq": 0.3}[kind]   # PQ is lossy


def test_search_k_limited_is_exact_and_falls_back():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    q = rng.normal(size=(40, 8)).astype(np.float32)
    full = faiss.IndexFlatIP(8)
    full.add(x)
    parts = []
    for sl in np.array_split(np.arange(600), 6):
        sub = faiss.IndexFlatIP(8)
        sub.add(x[sl])
        parts.append(lambda qq, kk, sub=sub, sl=sl: (lambda D, I: (D, np.where(I >= 0, sl[I], -1)))(*sub.search(qq, kk)))
    calls = []

    def fallback(qq, kk):
        calls.append(len(qq))
        return full.search(qq, kk)

    D, I, n_fb = search_k_limited(parts, fallback, q, k=50, max_k=16)
    Dr, Ir = full.search(q, 50)
    assert same_neighbours(Dr, Ir, D, I).all()
    assert n_fb == sum(calls) and n_fb > 0        # 50 > 6*16/2: some rows must fall back
    D2, I2, n2 = search_k_limited(parts, fallback, q, k=12, max_k=16)
    assert n2 == 0 and same_neighbours(*full.search(q, 12), D2, I2).all()


def test_merge_topk_pads_and_orders():
    D, I = merge_topk([np.array([[0.9, 0.1]]), np.array([[0.5, -3e38]])],
                      [np.array([[1, 2]]), np.array([[7, -1]])], k=4)
    assert I.tolist() == [[1, 7, 2, -1]] and D[0, 3] == -np.inf


def test_exact_topk_baseline_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    D, I = exact_topk(q, x, 7, chunk=7, base_chunk=300)
    Dr, Ir = _exact_np(q, x, np.arange(1000), 7, "ip")
    assert same_neighbours(Dr, Ir, D, I, rtol=1e-4, atol=1e-4).all()


def _export_small(tmp_path, kind="flat"):
    x = np.random.default_rng(5).normal(size=(300, 8)).astype(np.float32)
    d = str(tmp_path / "idx")
    export_index([ArraySource(x)], d, IndexSpec(kind, nlist=4, pq_m=4, train_size=300))
    return d


def test_bad_indexes_are_refused(tmp_path):
    d = _export_small(tmp_path)
    idx = ShardedIndex.open(d)
    with pytest.raises(IndexError_, match="query dimension 5 != index dim 8"):
        idx.search(np.zeros((2, 5), np.float32), 3)
    man = json.load(open(os.path.join(d, "manifest.json")))
    # wrong dimension in the manifest
    bad = dict(man, dim=16)
    json.dump(bad, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(IndexError_, match="dimension 8 != manifest dim 16"):
        ShardedIndex.open(d)
    json.dump(man, open(os.path.join(d, "manifest.json"), "w"))
    # truncated shard file
    shard = os.path.join(d, man["shards"][0]["file"])
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    with pytest.raises(IndexError_, match="truncated"):
        ShardedIndex.open(d)
    # garbage with the right size: the checksum refuses it, and faiss too when not verified
    open(shard, "wb").write(b"\0" * len(data))
    with pytest.raises(IndexError_, match="SHA-256 differs"):
        ShardedIndex.open(d)
    with pytest.raises(IndexError_, match="corrupted faiss index"):
        ShardedIndex.open(d, verify=False)
    # a bare index without id map
    faiss.write_index(faiss.IndexFlatIP(8), shard)
    man["shards"][0].update(bytes=os.path.getsize(shard), ntotal=0, sha256=file_sha256(shard))
    man["ntotal"] = 0
    json.dump(man, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(IndexError_, match="no id map"):
        ShardedIndex.open(d)
    os.remove(os.path.join(d, "manifest.json"))
    with pytest.raises(IndexError_, match="no manifest.json"):
        ShardedIndex.open(d)


def test_a_flipped_byte_in_a_shard_is_refused(tmp_path):
    """One flipped bit inside the stored vectors still reads as a valid faiss index and changes
    what search returns; the manifest's per-shard SHA-256 refuses the file."""
    d = _export_small(tmp_path)
    man = json.load(open(os.path.join(d, "manifest.json")))
    shard = os.path.join(d, man["shards"][0]["file"])
    assert man["shards"][0]["sha256"] == hashlib.sha256(open(shard, "rb").read()).hexdigest()
    q = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    before = ShardedIndex.open(d).search(q, 5)
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 3] ^= 0x40                      # inside the float32 vectors of the flat index
    open(shard, "wb").write(bytes(data))
    after = ShardedIndex.open(d, verify=False, check_norms=False).search(q, 5)
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))
    with pytest.raises(IndexError_, match="SHA-256 differs from the manifest"):
        ShardedIndex.open(d)


def test_cosine_index_with_unnormalised_vectors_is_refused(tmp_path):
    x = 3 * np.random.default_rng(6).normal(size=(50, 8)).astype(np.float32)
    d = str(tmp_path / "raw")
    export_index([ArraySource(x)], d, IndexSpec("flat", "ip"))
    man = json.load(open(os.path.join(d, "manifest.json")))
    man["spec"]["metric"] = "cosine"       # claims cosine, vectors are not unit norm
    json.dump(man, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.raises(IndexError_, match="norms off 1"):
        ShardedIndex.open(d)


def test_export_refuses_overwrite_and_dim_mismatch(tmp_path):
    d = _export_small(tmp_path)
    with pytest.raises(FileExistsError):
        export_index([ArraySource(np.ones((3, 8), np.float32))], d)
    a = write_embeddings(tmp_path / "a.parquet", [0, 1], np.ones((2, 4)))
    b = write_embeddings(tmp_path / "b.parquet", [2, 3], np.ones((2, 6)))
    with pytest.raises(ValueError, match="b.parquet: embedding dimension 6 differs from 4"):
        export_index([a, b], str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")                   # no shard of a.parquet left behind
    # a failed --overwrite leaves the old index whole and searchable, and no temp directory
    before = sorted(os.listdir(d))
    with pytest.raises(ValueError, match="differs"):
        export_index([a, b], d, overwrite=True)
    assert sorted(os.listdir(d)) == before and ShardedIndex.open(d).ntotal > 0
    assert not [n for n in os.listdir(os.path.dirname(d)) if ".tmp-" in n]
    export_index([a], d, overwrite=True)                         # a good one replaces it
    assert ShardedIndex.open(d).ntotal == 2 and not [n for n in os.listdir(d) if n.endswith(".faiss")][1:]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_torch_flat_backend_equals_faiss(tmp_path, metric):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    d = str(tmp_path / metric)
    export_index([ArraySource(x)], d, IndexSpec("flat", metric), shard_rows=700)
    a = ShardedIndex.open(d, backend="faiss").search(q, 15)
    t = ShardedIndex.open(d, backend="torch")
    assert t.backend == "torch"
    b = t.search(q, 15)
    assert same_neighbours(*a, *b, rtol=1e-4, atol=1e-4).all()


@pytest.mark.parametrize("factory, floor", [("IVF16,Flat", 0.9), ("HNSW16,Flat", 0.95), ("PCA16,IVF16,Flat", 0.2)])
def test_factory_string_round_trip_and_recall(tmp_path, factory, floor):
    """--index-factory: faiss' own string; ids kept (IVF, or an IDMap around the rest), nprobe and
    efSearch applied through pre-transforms, the file equals the in-memory index."""
    from xclass.eval.export import _training_sample
    from xclass.eval.index import set_search_params, train

    x, _ = clustered(4000, 32, 40, seed=2)
    ids = np.arange(4000, dtype=np.int64) * 5
    spec = IndexSpec("factory", factory=factory, nprobe=8, train_size=4000, ef_search=64)
    man = export_index([ArraySource(x, ids)], str(tmp_path / "i"), spec)
    assert man["spec"]["factory"] == factory
    q, _ = clustered(100, 32, 40, seed=2)
    D, I = ShardedIndex.open(str(tmp_path / "i")).search(q, 10)
    mem = new_index(32, spec)
    train(mem, _training_sample([ArraySource(x, ids)], spec, 65536, 0), spec)
    mem.add_with_ids(prepare(x, spec), ids)
    set_search_params(mem, spec)
    assert np.array_equal(mem.search(prepare(q, spec), 10)[1], I)
    _, Ir = _exact_np(q, x, ids, 10)
    assert np.mean([len(set(r) & set(e)) / 10 for r, e in zip(I, Ir)]) >= floor
    assert set(I.ravel()) <= set(ids.tolist())                       # global ids come back
    if factory.startswith("IVF"):                                     # nprobe = nlist: every list, exact
        spec_all = IndexSpec("factory", factory=factory, nprobe=16, train_size=4000)
        set_search_params(mem, spec_all)
        assert np.array_equal(mem.search(prepare(q, spec), 10)[1], Ir)


def test_bad_factory_strings_are_refused(tmp_path, capsys):
    from xclass.cli.main import main as xclass

    x, _ = clustered(300, 16, 5, seed=1)
    f = write_embeddings(tmp_path / "e.parquet", np.arange(300), x)
    with pytest.raises(ValueError, match="faiss cannot build it"):
        export_index([ArraySource(x, np.arange(300))], str(tmp_path / "i"), IndexSpec("factory", factory="IVF16,Nope"))
    with pytest.raises(ValueError, match="goes with kind 'factory'"):
        IndexSpec("flat", factory="IVF16,Flat")
    for bad, why in (("IVF16,Nope", "cannot build"), ("IVF1024,Flat", "training on 300 vectors failed")):
        assert xclass(["export-index", "--embeddings", str(f), "--index-factory", bad, "--out",
                       str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and not os.path.exists(tmp_path / "o")


def test_an_index_faiss_cannot_clone_to_the_gpu_stays_on_the_cpu(monkeypatch, capsys):
    """No GPU here: the clone is made to fail as faiss' GPU build does for an unsupported type."""
    import xclass.eval.index as xi

    def refuse(res, device, index):
        raise RuntimeError("Error in faiss::gpu::ToGpuCloner::clone_Index\\nunsupported index type")

    monkeypatch.setattr(xi, "_gpu_res", lambda: None)
    monkeypatch.setattr(xi.faiss, "index_cpu_to_gpu", refuse, raising=False)
    idx = new_index(8, IndexSpec("factory", factory="PCA4,Flat"))
    assert xi.to_gpu(idx) is idx
    assert "no GPU form of this index" in capsys.readouterr().err
