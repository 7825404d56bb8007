"""The head's peak activation memory is at most two [B_g, C_active]
fp32 buffers (one logits buffer reused for softmax and gradient, plus one transient).

Measured as the growth of the peak RSS of a fresh process over one forward + backward, with d small
so that the weight gradient [C, d] is minor next to the [B, C] buffers. Three live [B, C] buffers
(the usual autograd graph of a margin softmax) would exceed the bound."""
import json
import subprocess
import sys

import pytest

from tests.heads.rss import HWM

pytestmark = pytest.mark.slow

CHILD = r"""
import json, resource, sys
from types import SimpleNamespace
import torch
torch.set_num_threads(1)
from xclass.parallel import ParallelContext
from xclass.heads.margin_head import margin_head
B, C, d, margin, r = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
cfg = SimpleNamespace(margin=margin, margin_params={}, sample_rate=r, label_smoothing=0.0, params={})
head = margin_head(cfg, num_classes=C, embedding_dim=d, ctx=ParallelContext.single(), seed=0)
emb = torch.randn(B, d, requires_grad=True)
labels = torch.randint(0, C, (B,))
W = torch.nn.Parameter(head.weight.detach().clone())
def naive_loss():  # plain autograd full-matrix ArcFace (acos/cos over [B, C]): several live [B, C] tensors
    cos = torch.nn.functional.linear(torch.nn.functional.normalize(emb), torch.nn.functional.normalize(W))
    theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    target = torch.nn.functional.one_hot(labels, C).bool()
    logits = 64 * torch.cos(torch.where(target, theta + 0.5, theta))
    return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits, labels))
def step():
    out = naive_loss() if sys.argv[6] == "naive" else head(emb, labels)
    out.loss.backward()
    head.weight.grad = W.grad = None
    head.sampled.clear()
    emb.grad = None
# a small warm-up on a few rows allocates the code paths' fixed costs
small = margin_head(cfg, num_classes=64, embedding_dim=d, ctx=ParallelContext.single(), seed=0)
small(emb, labels % 64).loss.backward()
emb.grad = None
reset_peak()
before = hwm()
step()
after = hwm()
print(json.dumps({"peak_growth": after - before}))
"""
CHILD = HWM + CHILD


@pytest.mark.parametrize("margin,r", [("arcface", 1.0), ("cosface", 1.0), ("arcface", 0.5)])
def test_peak_activation_memory_within_two_buffers(margin, r):
    B, C, d = 256, 200_000, 8
    growth = _peak_growth(B, C, d, margin, r, "head")
    c_active = int(C * r)
    bound = 2 * B * c_active * 4 + 3 * C * d * 4 + 32 * 2**20  # 2 buffers + weight grad/copies + slack
    three_buffers = 3 * B * c_active * 4
    assert growth <= bound < three_buffers + 3 * C * d * 4, (growth, bound)


def test_measurement_sees_a_naive_head_exceed_the_bound():
    """Control: the same measurement on a plain autograd full-matrix ArcFace exceeds the bound
    (so the measurement can fail) and is well above the sharded head's growth."""
    B, C, d = 256, 200_000, 8
    naive = _peak_growth(B, C, d, "arcface", 1.0, "naive")
    head = _peak_growth(B, C, d, "arcface", 1.0, "head")
    assert naive > 2 * B * C * 4 + 3 * C * d * 4 + 32 * 2**20, naive
    assert naive > 1.5 * head, (naive, head)


def _peak_growth(B, C, d, margin, r, mode):
    out = subprocess.run([sys.executable, "-c", CHILD, str(B), str(C), str(d), margin, str(r), mode],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]
