"""head.params.update_in_backward: the fused backward applies the optimizer step (SGD with or
without momentum, AdamW) chunk by chunk. Three optimizer steps equal the normal path (whole weight
gradient, then ShardedHeadOptimizer.step) on 1 (no group), 2 and 3 gloo ranks: weights, state,
d loss / d emb, losses, the skipped-step count and the reported gradient norm; a non-finite
step leaves rows and momentum untouched on every rank; the settings where it would not be the
normal step are refused naming the key; and one step's peak memory drops by the weight
gradient's size (the memory formula of docs/fused_head.md)."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from tests.distutil import run_on_world
from tests.heads import cases as K
from tests.heads.rss import HWM
from xclass.config_types import ConfigError
from xclass.heads.base import HEADS
from xclass.heads import fused_update
from xclass.heads.fused import memory_bytes
from xclass.parallel import ParallelContext

CASES = [
    dict(id="arcface", margin="arcface", params={}),
    dict(id="cosface_ls", margin="cosface", params={}, ls=0.1),
    dict(id="subcenter_k2", margin="subcenter_arcface", params={"k": 2}),
    dict(id="raw_softmax_gap", margin="softmax", params={"s": 1.0}, scale=1e3),  # unit rows are views of W
    dict(id="elastic_arc_plus", margin="elastic_arc_plus", params={}),
    dict(id="no_momentum", margin="arcface", params={}, momentum=0.0),
    dict(id="auto_chunk", margin="arcface", params={}, chunk=0),
    dict(id="one_class_per_rank", margin="arcface", params={}, C=3, chunk=1),
    dict(id="all_ignored", margin="cosface", params={}, ignore_all=True),
    dict(id="nonfinite_step", margin="arcface", params={}, nan_step=1),
    dict(id="adamw", margin="arcface", params={}, optim="adamw"),
    dict(id="subcenter_ls_adamw", margin="subcenter_arcface", params={"k": 2}, ls=0.1, optim="adamw"),
    dict(id="nonfinite_adamw", margin="cosface", params={}, nan_step=1, optim="adamw"),
]


def _head(ctx, case, update):
    params = {"impl": "fused", "chunk": case.get("chunk", 4), "update_in_backward": update}
    cfg = types.SimpleNamespace(name="margin", margin=case["margin"], margin_params=case["params"], sample_rate=1.0,
                                label_smoothing=case.get("ls", 0.0), params=params)
    head = HEADS.get("margin")(cfg, num_classes=case.get("C", K.C), embedding_dim=K.D, ctx=ctx, seed=K.SEED)
    sgd = types.SimpleNamespace(**{**vars(K.SGD), "momentum": case.get("momentum", 0.9)})
    return head, head.make_optimizer(K.ADAMW if case.get("optim") == "adamw" else sgd)


def _batch(step, case):
    g = torch.Generator().manual_seed(100 + step)
    emb = torch.randn(K.B, K.D, generator=g) * case.get("scale", 1.0)
    labels = torch.randint(0, case.get("C", K.C), (K.B,), generator=g)
    labels[2] = -100
    if case.get("ignore_all"):
        labels[:] = -100
    if case.get("nan_step") == step:
        emb[3, 1] = float("nan")
    return emb, labels


def _steps(ctx, case, update):
    head, opt = _head(ctx, case, update)
    ws, rank = ctx.world_size, ctx.rank
    out = {}
    for step in range(3):
        emb, labels = _batch(step, case)
        e = K.local(emb, ws, rank).clone().requires_grad_(True)
        res = head(e, K.local(labels, ws, rank))
        res.loss.backward()
        g = head.weight.grad
        sq = opt.backward_sq_norm() if update else (g.double() ** 2).sum()
        out[f"sq{step}"] = sq.reshape(()).clone() if sq is not None else torch.zeros((), dtype=torch.float64)
        out[f"loss{step}"], out[f"emb_grad{step}"] = res.loss.detach(), e.grad.clone()
        opt.step()
        opt.zero_grad()
        out[f"w{step}"] = head.weight.detach().clone()
        for name, v in opt.state["weight"].items():  # momentum, or AdamW's moments and row step counts
            out[f"{name}{step}"] = v.clone()
    out["skipped"] = int(opt.skipped)
    out["grad_none"] = head.weight.grad is None
    return out


def run_cases(ctx):
    return {c["id"]: (_steps(ctx, c, False), _steps(ctx, c, True)) for c in CASES}


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["ws1_nogroup", "ws2", "ws3"])
def ranked(request):
    return request.param, run_on_world(run_cases, request.param)


@pytest.mark.dist
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_update_in_backward_equals_the_optimizer_step(ranked, case):
    ws, results = ranked
    for rank, res in enumerate(results):
        normal, inline = res[case["id"]]
        for key in normal:
            if key.startswith("sq"):
                continue
            a, b = inline[key], normal[key]
            if isinstance(a, torch.Tensor):
                # the same operations in the same order: equal up to a last-bit rounding
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True), (ws, rank, key)
            else:
                assert a == b, (ws, rank, key, a, b)


@pytest.mark.dist
def test_reported_norm_and_nonfinite_skip(ranked):
    ws, results = ranked
    for res in results:
        normal, inline = res["arcface"]
        for step in range(3):  # the head's share of the grad norm, summed chunk by chunk
            torch.testing.assert_close(inline[f"sq{step}"], normal[f"sq{step}"], rtol=1e-5, atol=1e-12)
            assert normal[f"sq{step}"] > 0
        normal, inline = res["nonfinite_step"]
        assert normal["skipped"] == inline["skipped"] == 1
        for key in ("w", "momentum"):  # step 1 skipped: rows and momentum as after step 0, on every rank
            assert torch.equal(inline[f"{key}1"], inline[f"{key}0"])
            assert not torch.equal(inline[f"{key}2"], inline[f"{key}1"])
        normal, inline = res["nonfinite_adamw"]
        assert normal["skipped"] == inline["skipped"] == 1
        for key in ("w", "exp_avg", "exp_avg_sq", "steps"):  # AdamW: the step counts did not advance either
            assert torch.equal(inline[f"{key}1"], inline[f"{key}0"])
        assert inline["grad_none"]  # no whole weight gradient exists in this mode


def test_refused_settings_name_the_key():
    ctx = ParallelContext.single()
    case = dict(margin="arcface", params={})
    with pytest.raises(ConfigError, match="head.params.update_in_backward.*sample_rate"):
        cfg = types.SimpleNamespace(name="margin", margin="arcface", margin_params={}, sample_rate=0.5,
                                    label_smoothing=0.0, params={"update_in_backward": True})
        HEADS.get("margin")(cfg, num_classes=K.C, embedding_dim=K.D, ctx=ctx, seed=0)
    with pytest.raises(ConfigError, match="head.params.update_in_backward must be true or false"):
        cfg = types.SimpleNamespace(name="margin", margin="arcface", margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.0, params={"update_in_backward": "yes"})
        HEADS.get("margin")(cfg, num_classes=K.C, embedding_dim=K.D, ctx=ctx, seed=0)
    with pytest.raises(ConfigError, match="head.params.update_in_backward.*impl = fused"):
        cfg = types.SimpleNamespace(name="margin", margin="arcface", margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.0, params={"impl": "materialized", "update_in_backward": True})
        HEADS.get("margin")(cfg, num_classes=K.C, embedding_dim=K.D, ctx=ctx, seed=0)
    head, _ = _head(ctx, case, True)
    with pytest.raises(ConfigError, match="head.params.update_in_backward.*sgd or adamw"):
        fused_update.check_optimizer(types.SimpleNamespace(name="adam"))
    head.make_optimizer(K.ADAMW)  # AdamW acts row by row: its step per chunk is exact
    run = lambda accum, clip: types.SimpleNamespace(train=types.SimpleNamespace(grad_accum=accum),  # noqa: E731
                                                    optim=types.SimpleNamespace(grad_clip=clip))
    head.check_run(run(1, 0.0))
    with pytest.raises(ConfigError, match="head.params.update_in_backward.*train.grad_accum"):
        head.check_run(run(2, 0.0))
    with pytest.raises(ConfigError, match="head.params.update_in_backward.*optim.grad_clip"):
        head.check_run(run(1, 1.0))
    fresh = HEADS.get("margin")(types.SimpleNamespace(name="margin", margin="arcface", margin_params={},
                                                      sample_rate=1.0, label_smoothing=0.0,
                                                      params={"impl": "fused", "update_in_backward": True}),
                                num_classes=K.C, embedding_dim=K.D, ctx=ctx, seed=0)
    with pytest.raises(RuntimeError, match="make_optimizer"):  # no optimizer to step yet
        fresh(torch.randn(4, K.D), torch.arange(4))
    with torch.no_grad():  # evaluation needs none
        fresh(torch.randn(4, K.D), torch.arange(4))


MEM_CHILD = HWM + r"""
import json, sys
from types import SimpleNamespace
import torch
torch.set_num_threads(1)
from xclass.parallel import ParallelContext
from xclass.heads.margin_head import margin_head
B, C, d, update = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
cfg = SimpleNamespace(margin="arcface", margin_params={}, sample_rate=1.0, label_smoothing=0.0,
                      params={"impl": "fused", "update_in_backward": update})
head = margin_head(cfg, num_classes=C, embedding_dim=d, ctx=ParallelContext.single(), seed=0)
opt = head.make_optimizer(SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, head_lr=None))
emb = torch.randn(B, d, requires_grad=True)
labels = torch.randint(0, C, (B,))
def step():
    head(emb, labels).loss.backward()
    opt.step()
    opt.zero_grad()
    emb.grad = None
step()  # the first step creates the momentum buffer and runs every code path once
reset_peak()
before = hwm()
step()
print(json.dumps({"peak_growth": hwm() - before}))
"""


def _growth(update, b, c, d):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # blocks above 64 KiB mapped and unmapped
    out = subprocess.run([sys.executable, "-c", MEM_CHILD, str(b), str(c), str(d), "1" if update else "0"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]


@pytest.mark.slow
def test_peak_memory_drops_by_the_weight_gradient():
    b, c, d = 256, 200_000, 64
    grad = 4 * c * d  # 51.2 MB
    normal, inline = _growth(False, b, c, d), _growth(True, b, c, d)
    assert normal >= grad, normal  # control: the normal step holds the whole gradient
    assert inline <= normal - 0.9 * grad, (normal, inline)
    # the formula (beyond W and momentum) covers the measurement, with 4 MiB allocator slack
    assert inline <= memory_bytes(b, c, d, update_in_backward=True) - 8 * c * d + 4 * 2**20, inline
    assert inline <= 0.1 * 4 * b * c  # and stays below a tenth of one [B, C] fp32 buffer
