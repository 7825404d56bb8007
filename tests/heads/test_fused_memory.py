"""The fused head's peak activation memory: one forward + backward allocates at most 0.1 of ONE
[B, C_local] fp32 buffer beyond the weight gradient (the materialised head needs at least one
whole buffer), and stays within xclass.heads.fused.memory_bytes (the formula in docs/fused_head.md).

Measured as the growth of the peak RSS of a fresh process over one step (as
tests/heads/test_activation_memory.py), with d small so the [B, C] terms would dominate."""
import json
import os
import subprocess
import sys

import pytest

from tests.heads.rss import HWM

from xclass.heads.fused import memory_bytes

pytestmark = pytest.mark.slow

CHILD = r"""
import json, resource, sys
from types import SimpleNamespace
import torch
torch.set_num_threads(1)
from xclass.parallel import ParallelContext
from xclass.heads.margin_head import margin_head
B, C, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
margin, r, impl = sys.argv[4], float(sys.argv[5]), sys.argv[6]
params = {"k": 3} if margin == "subcenter_arcface" else {}
cfg = SimpleNamespace(margin=margin, margin_params=params, sample_rate=r, label_smoothing=0.0, params={"impl": impl})
head = margin_head(cfg, num_classes=C, embedding_dim=d, ctx=ParallelContext.single(), seed=0)
emb = torch.randn(B, d, requires_grad=True)
labels = torch.randint(0, C, (B,))
def step(h, lab):
    h(emb, lab).loss.backward()
    h.weight.grad = None
    h.sampled.clear()
    emb.grad = None
# a small warm-up on a few classes allocates the code paths' fixed costs
step(margin_head(cfg, num_classes=64, embedding_dim=d, ctx=ParallelContext.single(), seed=0), labels % 64)
reset_peak()
before = hwm()
step(head, labels)
after = hwm()
print(json.dumps({"peak_growth": after - before}))
"""
CHILD = HWM + CHILD

B, C, D = 256, 200_000, 8


def _growth(margin, r, impl):
    # a fixed mmap threshold: glibc's adaptive one moves freed blocks onto the heap, where
    # fragmentation made the peak vary by +-8 MB from run to run; fixed, blocks above 64 KiB are
    # mapped and unmapped, so the peak RSS is the peak of live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", CHILD, str(B), str(C), str(D), margin, str(r), impl],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]


def _weight_grad_bytes(k, r):
    """The weight gradient (r = 1) or the sampled rows, their gradient and the sampling keys with
    their hash temporaries (sizes C_l and C_a: not activations)."""
    return 4 * C * k * D if r >= 1 else 8 * int(C * r) * k * D + 48 * C


@pytest.mark.parametrize("margin,k,r", [("arcface", 1, 1.0), ("subcenter_arcface", 3, 1.0), ("cosface", 1, 0.5)])
def test_fused_peak_activation_memory_is_a_tenth_of_one_buffer(margin, k, r):
    growth = _growth(margin, r, "fused")
    one_buffer = 4 * B * C
    act = growth - _weight_grad_bytes(k, r)
    assert act <= 0.1 * one_buffer, (growth, act, one_buffer)
    # the memory formula covers the measurement (4 MiB allocator slack)
    assert growth <= memory_bytes(B, C, D, k=k, r=r) - 8 * C * k * D + 4 * 2**20, growth


def test_measurement_sees_the_materialized_buffer():
    """Control: the same measurement sees the materialised head's buffer (about one [B, C] fp32
    buffer beyond the weight gradient; half of it is already 5x the fused bound)."""
    growth = _growth("arcface", 1.0, "materialized")
    assert growth - _weight_grad_bytes(1, 1.0) > 0.5 * 4 * B * C, growth
