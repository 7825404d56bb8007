"""Shortlist search: the flat kind (torch GEMM + top-k on the embeddings' device) returns the
ids of faiss' exact IndexFlatIP; numpy in -> numpy out, tensor in -> tensor out on its device;
the blocked search equals one block; hnsw still goes through faiss."""
import numpy as np
import pytest
import torch

from xclass.heads.xmc.shortlist import Shortlist, topk_ip

faiss = pytest.importorskip("faiss")


def _data(R=500, B=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(R, d, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    return x, q


@pytest.mark.parametrize("k", [1, 7, 500, 600])
def test_flat_equals_faiss_flat_ip(k):
    x, q = _data()
    sl = Shortlist(k, 10, "flat")
    sl.rebuild(x, step=0)
    got = sl.search(q)
    ref = faiss.IndexFlatIP(x.shape[1])
    ref.add(x.numpy())
    D, I = ref.search(q.numpy(), min(k, 500))
    assert torch.is_tensor(got) and got.dtype == torch.int64 and got.shape == (64, min(k, 500))
    np.testing.assert_array_equal(got.numpy(), I)
    scores = (q @ x.t()).gather(1, got)
    np.testing.assert_allclose(scores.numpy(), D, rtol=1e-5, atol=1e-6)


def test_numpy_in_numpy_out_and_blocking():
    x, q = _data(R=300, B=50)
    sl = Shortlist(5, 10, "flat")
    sl.rebuild(x.numpy(), step=3)
    got = sl.search(q.numpy())
    assert isinstance(got, np.ndarray) and got.shape == (50, 5) and sl.size == 300
    one = topk_ip(q, x, 5)
    blocked = topk_ip(q, x, 5, block_elems=300 * 7)  # 7 queries per block
    assert torch.equal(one, blocked) and np.array_equal(one.numpy(), got)
    assert not sl.stale(12) and sl.stale(13)


def test_snapshot_does_not_follow_later_updates():
    x, q = _data()
    sl = Shortlist(3, 10, "flat")
    sl.rebuild(x, step=0)
    before = sl.search(q).clone()
    x.mul_(-1)  # the head's weights move on; the shortlist keeps its snapshot
    assert torch.equal(sl.search(q), before)


def test_hnsw_tensor_round_trip():
    x, q = _data(R=200)
    sl = Shortlist(4, 10, "hnsw")
    sl.rebuild(x, step=0)
    got = sl.search(q)
    assert torch.is_tensor(got) and got.shape == (64, 4) and got.dtype == torch.int64
    exact = topk_ip(q, x, 4)
    assert (got[:, 0] == exact[:, 0]).float().mean() > 0.9  # HNSW is approximate
