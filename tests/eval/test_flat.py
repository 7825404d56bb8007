"""Torch flat backend: fused grouped top-k and blocked search vs argsort / numpy references."""
import numpy as np
import pytest
import torch

from xclass.eval.flat import TorchFlat, grouped_topk
from xclass.eval.knn import same_neighbours


def _ref_topk(S: np.ndarray, k: int):
    o = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, o, 1), o


@pytest.mark.parametrize("n,k,group", [(1000, 5, 16), (1024, 3, 64), (997, 10, 8), (50, 5, 64),
                                       (4096, 1, 32)])
def test_grouped_topk_equals_full_sort(n, k, group):
    rng = np.random.default_rng(n + k)
    S = rng.normal(size=(37, n)).astype(np.float32)
    S[:5] = np.round(S[:5], 1)                 # heavy ties in some rows
    S[5, :] = 0.25                             # a row that is all one value
    S[6, 3 * group: 3 * group + group] = 9.0   # whole top-k inside one group
    v, c = grouped_topk(torch.from_numpy(S), k, group)
    Dr, Ir = _ref_topk(S, k)
    assert v.shape == (37, min(k, n))
    np.testing.assert_array_equal(v.numpy(), Dr)                  # values exact, best first
    np.testing.assert_array_equal(np.take_along_axis(S, c.numpy(), 1), v.numpy())  # columns hold them
    assert all(len(set(r)) == len(r) for r in c.numpy().tolist())  # no column twice
    # away from ties the columns themselves agree
    assert same_neighbours(Dr, Ir, v.numpy(), c.numpy(), rtol=0, atol=0).all()


def test_grouped_topk_fails_on_wrong_answer():
    S = torch.arange(640, dtype=torch.float32).reshape(1, 640)
    v, c = grouped_topk(S, 3, 64)
    assert c.tolist() == [[639, 638, 637]] and v.tolist() == [[639.0, 638.0, 637.0]]


@pytest.mark.parametrize("hib", [True, False])
@pytest.mark.parametrize("k", [1, 7, 300])
def test_torchflat_blocks_equal_numpy(hib, k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(1000, 12)).astype(np.float32)
    ids = rng.permutation(5000)[:1000].astype(np.int64)
    q = rng.normal(size=(45, 12)).astype(np.float32)
    f = TorchFlat(x, ids, higher_is_better=hib, db_block=256, q_chunk=16, group=8)
    D, I = f.search(q, k)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if hib:
        S = q64 @ x64.T
    else:           # rank by negative squared L2; report the distance
        S = -((q64 ** 2).sum(1)[:, None] - 2 * q64 @ x64.T + (x64 ** 2).sum(1)[None])
    Dr, cols = _ref_topk(S, k)
    Dr = Dr if hib else -Dr
    assert same_neighbours(Dr, ids[cols], D.astype(np.float64), I, rtol=1e-4, atol=1e-4).all()


def test_torchflat_pads_when_shard_is_small():
    x = np.eye(3, 4, dtype=np.float32)
    D, I = TorchFlat(x, np.array([10, 11, 12])).search(np.array([[0, 1, 0, 0]], np.float32), 5)
    assert I.tolist() == [[11, 10, 12, -1, -1]] or I.tolist() == [[11, 12, 10, -1, -1]]
    assert D[0, 0] == 1.0 and np.isneginf(D[0, 3:]).all()
    D, I = TorchFlat(x, None, higher_is_better=False).search(np.zeros((1, 4), np.float32), 4)
    assert np.isposinf(D[0, 3]) and I[0, 3] == -1 and np.allclose(D[0, :3], 1.0)
