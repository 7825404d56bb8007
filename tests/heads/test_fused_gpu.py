"""GPU checks of the fused head (marker ``gpu``; skipped without CUDA or Triton): the Triton
forward-statistics kernel equals the chunked torch path run on CPU (fp32: 1e-5; bf16: 1e-2 of the
log-sum-exp), the backward kernels' dL/demb and dL/dW equal it too (fp32: 1e-5; bf16: 2e-2 of
the largest entry; d = 128..512, C up to 100,003), and a fused head step on CUDA (kernels forward
and backward) equals the materialised head on CUDA (fp32, 1e-5), as update_in_backward equals the
normal SGD step. Never run so far (no GPU in the sessions that wrote them)."""
import importlib.util
import types

import pytest
import torch

from xclass.heads import fused, fused_triton
from xclass.heads.base import HEADS
from xclass.parallel import ParallelContext

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")]


@pytest.mark.parametrize("dt,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("b,c,d,norm,ls", [(1024, 100_003, 512, True, 0.0), (257, 5_000, 128, True, 0.1),
                                           (64, 3_000, 200, False, 0.0)])
def test_kernel_equals_cpu_path(dt, tol, b, c, d, norm, ls):
    g = torch.Generator().manual_seed(0)
    e = torch.randn(b, d, generator=g)
    e = torch.nn.functional.normalize(e, dim=1) if norm else e
    w = torch.randn(c, d, generator=g) * 0.05
    t = torch.randint(0, c, (b,), generator=g)
    t[:3] = torch.tensor([-1, 0, c - 1])
    zt = torch.randn(b, generator=g) * 10
    spec = fused.FusedSpec(s=64.0 if norm else 1.0, k=1, normalized=norm, smoothing=ls, n_cls=c, chunk=0)
    m1, s1, z1 = fused_triton.forward_stats(e.to(dt).cuda(), w.cuda(), t.cuda(), zt.cuda(), spec.s, norm, ls > 0)
    m2, s2, z2 = fused.forward_stats_torch(e.to(dt).float(), w, t, zt, spec)
    lse1, lse2 = (m1 + s1.log()).cpu(), m2 + s2.log()
    assert float((lse1 - lse2).abs().max()) <= tol * max(1.0, float(lse2.abs().max()))
    if ls:
        assert float((z1.cpu() - z2).abs().max()) <= tol * max(1.0, float(z2.abs().max()))


@pytest.mark.parametrize("dt,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("b,c,d,norm,ls", [(1024, 100_003, 512, True, 0.0), (257, 5_000, 128, True, 0.1),
                                           (64, 3_000, 200, False, 0.0), (300, 20_011, 256, True, 0.0)])
def test_backward_kernels_equal_cpu_path(dt, tol, b, c, d, norm, ls):
    """dL/demb and dL/dW of the Triton backward (autotuned tiles) against the chunked torch loop
    on CPU, from the same log-sum-exp; relative to each tensor's largest entry."""
    g = torch.Generator().manual_seed(1)
    e = torch.randn(b, d, generator=g)
    e = (torch.nn.functional.normalize(e, dim=1) if norm else e).to(dt)
    w = torch.randn(c, d, generator=g) * 0.05
    t = torch.randint(0, c, (b,), generator=g)
    t[:3] = torch.tensor([-1, 0, c - 1])
    gs = torch.rand(b, generator=g)
    gs[5] = 0.0
    spec = fused.FusedSpec(s=64.0 if norm else 1.0, k=1, normalized=norm, smoothing=ls, n_cls=c, chunk=0)
    ef = e.float()
    m, se, _ = fused.forward_stats_torch(ef, w, t, torch.randn(b, generator=g), spec)
    lse = m + se.log()
    gs = gs * spec.s
    acc, dw_ref = torch.zeros(b, d), torch.empty_like(w)
    for a in range(0, c, 4096):
        fused.backward_chunk(ef, ef * gs.unsqueeze(1), w, a, min(a + 4096, c), t, lse, spec, acc, dw_ref)
    de_ref = acc * gs.unsqueeze(1)
    de, dw = fused_triton.backward(e.cuda(), w.cuda(), t.cuda(), lse.cuda(), gs.cuda(), spec.s, norm,
                                   ls / c if ls else 0.0)
    for got, ref in ((de.cpu(), de_ref), (dw.cpu(), dw_ref)):
        assert float((got - ref).abs().max()) <= tol * float(ref.abs().max())


@pytest.mark.parametrize("margin", ["arcface", "cosface", "softmax", "subcenter_arcface"])
def test_fused_head_step_on_cuda_equals_materialized(margin):
    dev = torch.device("cuda")
    res = {}
    for impl in ("materialized", "fused"):
        cfg = types.SimpleNamespace(name="margin", margin=margin, margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.1, params={"impl": impl})
        h = HEADS.get("margin")(cfg, num_classes=20_011, embedding_dim=128, ctx=ParallelContext.single(),
                                seed=1).to(dev)
        g = torch.Generator().manual_seed(2)
        emb = torch.randn(300, 128, generator=g).to(dev).requires_grad_(True)
        lab = torch.randint(0, 20_011, (300,), generator=g).to(dev)
        lab[4] = -100
        loss = h(emb, lab).loss
        loss.backward()
        res[impl] = (loss.detach(), emb.grad, h.weight.grad)
    for a, b in zip(res["fused"], res["materialized"]):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("margin", ["arcface", "subcenter_arcface"])
def test_update_in_backward_on_cuda_equals_the_optimizer_step(margin):
    """update_in_backward on CUDA (Triton backward per class chunk of 4,096; sub-centres: the torch
    loop) equals the whole-gradient SGD-momentum step: rows and momentum after two steps."""
    dev = torch.device("cuda")
    res = {}
    for upd in (False, True):
        cfg = types.SimpleNamespace(name="margin", margin=margin, margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.1,
                                    params={"impl": "fused", "chunk": 4096, "update_in_backward": upd})
        h = HEADS.get("margin")(cfg, num_classes=20_011, embedding_dim=128, ctx=ParallelContext.single(),
                                seed=1).to(dev)
        opt = h.make_optimizer(types.SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                                                     head_lr=None))
        g = torch.Generator().manual_seed(2)
        for _ in range(2):
            emb = torch.randn(300, 128, generator=g).to(dev).requires_grad_(True)
            lab = torch.randint(0, 20_011, (300,), generator=g).to(dev)
            h(emb, lab).loss.backward()
            opt.step()
            opt.zero_grad()
        res[upd] = (h.weight.detach(), opt.state["weight"]["momentum"], emb.grad)
    for a, b in zip(res[True], res[False]):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))
