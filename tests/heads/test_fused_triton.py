"""The Triton kernels (xclass/heads/fused_triton.py: forward statistics, and the backward's dL/demb
and dL/dW) equal the chunked torch path, run on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, in a subprocess so the setting does not leak): ragged B and C (not multiples
of the tiles), ignored rows, targets in the first / last tile, label smoothing, raw and cosine
logits, logit gaps of 200, fp16 inputs (the interpreter has no bf16); and a whole fused head step
with the kernels (forward and backward) equals the materialised head. Skipped when Triton is not
installed (it is an optional extra, ``pip install xclass[triton]``)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

CHILD = r"""
import json, types
import torch
from xclass.heads import fused, fused_triton
from xclass.heads.base import HEADS
from xclass.parallel import ParallelContext
torch.manual_seed(0)
out = {}
for name, b, c, d, norm, ls, dt, gap in [("norm", 70, 300, 40, True, 0.0, torch.float32, 1.0),
                                       ("raw_ls", 65, 129, 16, False, 0.1, torch.float32, 1.0),
                                       ("gap200", 9, 257, 8, False, 0.0, torch.float32, 400.0),
                                       ("fp16", 33, 200, 64, True, 0.0, torch.float16, 1.0)]:
    e = torch.nn.functional.normalize(torch.randn(b, d), dim=1) if norm else torch.randn(b, d) * gap
    e = e.to(dt)
    w = torch.randn(c, d) * 0.05
    t = torch.randint(0, c, (b,))
    t[:3] = torch.tensor([-1, 0, c - 1])
    zt = torch.randn(b) * 10
    spec = fused.FusedSpec(s=30.0 if norm else 1.0, k=1, normalized=norm, smoothing=ls, n_cls=c, chunk=50)
    m1, s1, z1 = fused_triton.forward_stats(e, w, t, zt, spec.s, norm, ls > 0, splits=3)
    m2, s2, z2 = fused.forward_stats_torch(e, w, t, zt, spec)
    lse1, lse2 = m1 + s1.log(), m2 + s2.log()
    out[name] = [float((lse1 - lse2).abs().max() / lse2.abs().max().clamp(min=1)),
                 float((z1 - z2).abs().max() / z2.abs().max().clamp(min=1))]
    # backward kernels (small tiles: several row and class tiles, ragged tails) vs the torch loop
    g = torch.rand(b)
    g[5] = 0.0  # an ignored row
    gs, sub = g * spec.s, (ls / c if ls else 0.0)
    acc, dw_ref = torch.zeros(b, d), torch.empty_like(w)
    ef = e.float()
    for a in range(0, c, 50):
        fused.backward_chunk(ef, ef * gs.unsqueeze(1), w, a, min(a + 50, c), t, lse2, spec, acc, dw_ref)
    de, dw = fused_triton.backward(e, w, t, lse2, gs, spec.s, norm, sub, True, blocks=(16, 32))
    de_ref = acc * gs.unsqueeze(1)
    out[name + "_bwd"] = [float((de - de_ref).abs().max() / de_ref.abs().max().clamp(min=1e-30)),
                          float((dw - dw_ref).abs().max() / dw_ref.abs().max().clamp(min=1e-30))]
for margin in ("arcface", "cosface", "softmax"):
    res = {}
    for impl in ("materialized", "fused"):
        cfg = types.SimpleNamespace(name="margin", margin=margin, margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.1, params={"impl": impl})
        h = HEADS.get("margin")(cfg, num_classes=150, embedding_dim=24, ctx=ParallelContext.single(), seed=1)
        g = torch.Generator().manual_seed(2)
        emb = torch.randn(20, 24, generator=g).requires_grad_(True)
        lab = torch.randint(0, 150, (20,), generator=g)
        lab[4] = -100
        loss = h(emb, lab).loss
        loss.backward()
        res[impl] = (loss.detach(), emb.grad, h.weight.grad)
    out["head_" + margin] = [float((a - b).abs().max() / b.abs().max().clamp(min=1))
                             for a, b in zip(res["fused"], res["materialized"])]
# update_in_backward: the Triton backward per class chunk (40 classes: not a divisor of 150),
# each chunk's dW stepped at once, equals the whole-gradient step (rows, momentum, emb grad)
for margin in ("arcface", "softmax"):
    res = {}
    for upd in (False, True):
        cfg = types.SimpleNamespace(name="margin", margin=margin, margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.1,
                                    params={"impl": "fused", "chunk": 40, "update_in_backward": upd})
        h = HEADS.get("margin")(cfg, num_classes=150, embedding_dim=24, ctx=ParallelContext.single(), seed=1)
        opt = h.make_optimizer(types.SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                                                     head_lr=None))
        g = torch.Generator().manual_seed(3)
        for step in range(2):
            emb = torch.randn(20, 24, generator=g).requires_grad_(True)
            lab = torch.randint(0, 150, (20,), generator=g)
            h(emb, lab).loss.backward()
            opt.step()
            opt.zero_grad()
        res[upd] = (h.weight.detach(), opt.state["weight"]["momentum"], emb.grad)
    out["update_" + margin] = [float((a - b).abs().max() / b.abs().max().clamp(min=1))
                               for a, b in zip(res[True], res[False])]
print(json.dumps(out))
"""


def test_triton_kernel_equals_torch_path_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    got = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    errs = json.loads(got.stdout.strip().splitlines()[-1])
    for name, vals in errs.items():  # fp16 backward: G and the unit rows are rounded to fp16
        tol = {"fp16": 1e-3, "fp16_bwd": 5e-3}.get(name, 1e-5)
        assert max(vals) <= tol, (name, vals)


def test_autotune_candidates_fit_every_padded_d():
    """The backward's autotune pruning keeps configs for every padded d = 128..512 (a GPU times
    them; here only the choice is checked): accumulator tile x d <= 128 x 128 fp32."""
    from xclass.heads import fused_kernels

    for own, other in (("BLOCK_C", "BLOCK_B"), ("BLOCK_B", "BLOCK_C")):
        for d_pad in (128, 256, 512):
            keep = fused_kernels._prune(own, other)(fused_kernels._tile_configs(), {}, D_PAD=d_pad)
            assert keep and all(c.kwargs[own] * d_pad <= 128 * 128 for c in keep), (own, d_pad)
    assert len(fused_kernels._tile_configs()) == 21
