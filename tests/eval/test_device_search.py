"""``evaluate --gpu`` / ``export-index --gpu`` on the CPU: the torch flat search (the path that
runs on the CUDA device when faiss has no GPUs) returns faiss' exact IndexFlatIP / IndexFlatL2
ids and scores; the device choice; export encoding (batched, prefetched, optional bf16) equals
the encoder applied by hand; the flags parse."""
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.train.common import features_config, write_features_data
from xclass.cli import build_parser
from xclass.eval.flat import TorchFlat
from xclass.eval.searcher import search_device

faiss = pytest.importorskip("faiss")


def _data(N=3000, n=70, d=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_torch_flat_on_explicit_device_equals_faiss_flat(metric, k):
    xb, q = _data()
    ids = np.arange(len(xb), dtype=np.int64) * 3 + 7
    ref = faiss.IndexFlatIP(xb.shape[1]) if metric == "ip" else faiss.IndexFlatL2(xb.shape[1])
    ref.add(xb)
    D_ref, I_ref = ref.search(q, k)
    tf = TorchFlat(xb, ids, higher_is_better=metric == "ip", db_block=1024, q_chunk=32,
                   device=torch.device("cpu"))
    assert tf.x.device.type == "cpu"
    D, I = tf.search(q, k)
    np.testing.assert_array_equal(I, ids[I_ref])
    np.testing.assert_allclose(D, D_ref, rtol=1e-4, atol=1e-3)


def test_search_device_choice():
    assert search_device(True, True, cuda=True) == "cpu"    # faiss' own GPU index does the search
    assert search_device(True, False, cuda=True) == "cuda"  # torch top-k on the GPU
    assert search_device(True, False, cuda=False) == "cpu"  # no GPU at all
    assert search_device(False, False, cuda=True) == "cpu"  # not asked


def test_sharded_index_gpu_flag_without_gpus_equals_cpu(tmp_path):
    from xclass.eval.export import export_index
    from xclass.eval.index import IndexSpec
    from xclass.eval.io import ArraySource
    from xclass.eval.searcher import ShardedIndex

    xb, q = _data(N=500)
    export_index([ArraySource(xb, np.arange(500, dtype=np.int64), name="a")], str(tmp_path / "idx"),
                 IndexSpec(kind="flat", metric="cosine"))
    cpu = ShardedIndex.open(str(tmp_path / "idx"))
    gpu = ShardedIndex.open(str(tmp_path / "idx"), use_gpu=True)
    want = "cuda" if torch.cuda.is_available() and not gpu.use_gpu else "cpu"
    assert gpu.torch_device == want and cpu.torch_device == "cpu"
    (D1, I1), (D2, I2) = cpu.search(q, 5), gpu.search(q, 5)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from xclass.train.loop import train
    from xclass.parallel import ParallelContext

    d = tmp_path_factory.mktemp("export_dev")
    data = write_features_data(str(d / "data"))
    cfg = features_config(data, str(d / "run"), "train.max_steps=2", "train.progress=false")
    train(cfg, ParallelContext.single())
    return str(d / "run"), data


@pytest.mark.parametrize("bf16", [False, True])
def test_embed_split_equals_the_encoder_by_hand(run, tmp_path, bf16):
    from xclass import components
    from xclass.eval.embed import embed_split, load_encoder, load_run
    from xclass.data.meta import load_meta

    run_dir, data = run
    out = embed_split(run_dir, "test", str(tmp_path / "e.parquet"), batch_rows=13,
                      device=torch.device("cpu"), bf16=bf16)
    t = pq.read_table(out)
    cfg, meta = load_run(run_dir), load_meta(data)
    src = pq.read_table(os.path.join(data, "test.parquet"))
    assert t.column("id").to_pylist() == src.column("id").to_pylist()
    assert t.column("label").to_pylist() == src.column("label").to_pylist()
    enc = load_encoder(run_dir, cfg, meta)
    x = torch.tensor(np.stack(src.column("features").to_numpy(zero_copy_only=False)))
    with torch.no_grad():
        ref = enc({"features": x}).float().numpy()
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0.05 if bf16 else 1e-5, atol=0.05 if bf16 else 1e-6)


def test_flags_parse():
    p = build_parser()
    a = p.parse_args(["export-index", "--run", "r", "--gpu", "--bf16", "--encode-batch-rows", "64", "--out", "o"])
    assert a.gpu and a.bf16 and a.encode_batch_rows == 64
    a = p.parse_args(["export-index", "--run", "r", "--out", "o"])
    assert not a.gpu and not a.bf16 and a.encode_batch_rows == 512
    assert p.parse_args(["evaluate", "--protocol", "xmc", "--gpu"]).gpu


def test_export_gpu_without_cuda_falls_back_to_cpu(monkeypatch, capsys):
    from xclass.eval.embed import encode_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert encode_device(True).type == "cpu" and "no CUDA" in capsys.readouterr().err
    assert encode_device(False).type == "cpu"
