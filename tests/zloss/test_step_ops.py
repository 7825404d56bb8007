"""The launch-saving forms of the factored step (docs/zloss.md, note 9) against brute force, and
the op / host-read budget of one steady step as counted by tools/bench_gpu_zloss.py --count-ops."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from xclass.heads.zloss import factored as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import bench_gpu  # noqa: E402,F401  (bench_gpu_zloss imports it on use)
import bench_gpu_zloss  # noqa: E402


def _brute_gram(H, idx, local, gA, D):
    """H^T Ydot Ydot^T H with Ydot [m, D] formed densely (duplicates summed, off-shard dropped)."""
    Y = torch.zeros(H.shape[0], D, dtype=H.dtype)
    for j in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            if local[j, k]:
                Y[j, idx[j, k]] += gA[j, k]
    R = Y.t() @ H
    return R.t() @ R


@pytest.mark.parametrize("pair_max", [10**9, 0])   # same-target matrix / sort + index_add
def test_target_gram_equals_dense(monkeypatch, pair_max):
    monkeypatch.setattr(F, "_PAIR_MAX", {"cpu": pair_max, "accelerator": pair_max})
    g = torch.Generator().manual_seed(3)
    m, K, d, D = 40, 3, 7, 9                                # few classes: many duplicate targets
    H = torch.randn(m, d, generator=g, dtype=torch.float64)
    idx = torch.randint(0, D, (m, K), generator=g)
    local = torch.rand(m, K, generator=g) < 0.7
    gA = torch.randn(m, K, generator=g, dtype=torch.float64)   # nonzero off-shard too: must be ignored
    got = F._target_gram(H, idx, local, gA)
    want = _brute_gram(H, idx, local, gA, D)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [0.01, 0.3, 0.49, 0.6, 5.0])
def test_needs_dense_step_matches_eigenvalues(scale):
    g = torch.Generator().manual_seed(int(scale * 100))
    d, tau = 6, 0.05
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    X = B @ B.t()
    X = X / torch.linalg.eigvalsh(X).max()                  # largest eigenvalue 1
    for e in (scale, 1.0 / (2.0 * (1.0 - 0.01)), -scale):    # min |eig C| from far to ~0.01
        C = torch.eye(d, dtype=torch.float64) - 2.0 * e * X
        want = bool(torch.linalg.eigvalsh(C).abs().min() < tau)
        assert F.needs_dense_step(X, e, tau) == want


def test_steady_step_ops_and_host_reads():
    """One steady zloss_efficient step: the only host reads are the singular-C guard and (on the
    CPU only) the label range check, no read hidden inside torch, and at most OPS_BUDGET aten ops
    (214 before the launch work of note 9; a new op in the step must be a deliberate choice)."""
    OPS_BUDGET = 149
    row = bench_gpu_zloss.count_ops(D=500, d=16, m=32, steps=1, device=torch.device("cpu"))
    assert sorted(row["reads"]) == ["__bool__ in parallel/device.py:check_on_device",
                                    "__float__ in heads/zloss/factored.py:needs_dense_step"]
    assert row["aten_syncs"] == ["_local_scalar_dense", "_local_scalar_dense"]
    assert 0 < row["ops"] <= OPS_BUDGET, row["op_counts"]
