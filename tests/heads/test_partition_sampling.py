"""Partition, Partial-FC sampling and init are functions of the GLOBAL class id,
plus factory/config errors and bf16 inputs (single process, fast)."""
import re
import types

import pytest
import torch

from xclass.parallel import ParallelContext
from xclass.heads.base import HEADS
from xclass.heads.partition import class_range, to_local
from xclass.heads.sampling import class_uniforms, sample_classes
from xclass.heads.sharded import init_class_rows


@pytest.mark.parametrize("C,W", [(11, 1), (11, 2), (11, 3), (10, 4), (5, 5)])
def test_class_range_uneven_partition(C, W):
    ranges = [class_range(C, r, W) for r in range(W)]
    assert ranges[0][0] == 0 and ranges[-1][1] == C
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_class_range_errors_and_to_local():
    with pytest.raises(ValueError, match="num_classes=2 < world size 3"):
        class_range(2, 0, 3)
    labels = torch.tensor([0, 4, 5, 7, -100])
    assert to_local(labels, 4, 7).tolist() == [-1, 0, 1, -1, -1]


@pytest.mark.parametrize("W", [2, 3, 5])
def test_sampled_global_set_is_world_size_independent(W):
    C, rate, seed, step = 1000, 0.1, 11, 4
    pos = torch.tensor([3, 500, 999])
    want = sample_classes(0, C, pos, rate, seed, step)
    got = []
    for r in range(W):
        a, b = class_range(C, r, W)
        t = to_local(pos, a, b)
        got.append(sample_classes(a, b, t[t >= 0], rate, seed, step) + a)
    assert torch.equal(torch.cat(got), want)
    assert set(pos.tolist()) <= set(want.tolist())
    assert 60 < want.numel() < 140  # ~ Binomial(1000, 0.1) + positives
    assert not torch.equal(want, sample_classes(0, C, pos, rate, seed, step + 1))


def test_class_uniforms_are_uniform_and_keyed():
    u = class_uniforms(torch.arange(200000), seed=1, step=0)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.005
    assert abs((u < 0.1).double().mean().item() - 0.1) < 0.003
    assert torch.equal(u[1234:1240], class_uniforms(torch.arange(1234, 1240), seed=1, step=0))


@pytest.mark.parametrize("W", [2, 3, 7])
def test_init_is_split_independent(W):
    full = init_class_rows(0, 9000, 2, 4, seed=5, std=0.01)  # spans three init blocks, K = 2
    parts = [init_class_rows(*class_range(9000, r, W), 2, 4, seed=5, std=0.01) for r in range(W)]
    assert torch.equal(torch.cat(parts), full)
    assert not torch.equal(full[:2], full[2:4])  # no duplicated centres (insightface's quirk)


def _cfg(**kw):
    base = dict(name="margin", margin="arcface", margin_params={}, sample_rate=1.0, label_smoothing=0.0, params={})
    base.update(kw)
    return types.SimpleNamespace(**base)


def _head(**kw):
    return HEADS.get("margin")(_cfg(**kw), num_classes=20, embedding_dim=8, ctx=ParallelContext.single(), seed=0)


def test_bad_inputs_give_clear_errors():
    head = _head()
    with pytest.raises(ValueError, match="label 20 outside"):
        head(torch.randn(2, 8), torch.tensor([1, 20]))
    with pytest.raises(ValueError, match=r"embeddings must be \[B, 8\]"):
        head(torch.randn(2, 7), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels must be an integer"):
        head(torch.randn(2, 8), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"unknown key 'head.margin_params.margn' for margin 'arcface' \(known: s, "):
        _head(margin_params={"margn": 0.3})
    for params, message in (({"s": -1.0}, "'head.margin_params.s' must be > 0.0, got -1.0"),
                            ({"s": float("nan")}, "'head.margin_params.s' must be a finite number, got nan"),
                            ({"s": "64"}, "'head.margin_params.s' must be a finite number, got '64'"),
                            ({"easy_margin": 1}, "'head.margin_params.easy_margin' must be true or false, got 1"),
                            ({"grad": "bogus"}, "'head.margin_params.grad' must be one of exact, straight_through")):
        with pytest.raises(ValueError, match=re.escape(message)):
            _head(margin_params=params)
    _head(margin_params={"m": -0.2, "s": 16})                  # negative margins and integer scales are fine
    with pytest.raises(ValueError, match=r"unknown key 'head.params.chunks' for head 'margin' \(known: init_std"):
        _head(params={"chunks": 4})
    with pytest.raises(ValueError, match=r"'head.params.init_std' must be a finite number > 0, got -1"):
        _head(params={"init_std": -1})
    for name, known in (("margin_angproto", "ap_weight, init_w, init_b, init_std"), ("angproto", "init_w, init_b")):
        with pytest.raises(ValueError, match=rf"unknown key 'head.params.bogus' for head '{name}' \(known: {known}"):
            HEADS.get(name)(_cfg(name=name, params={"bogus": 1}), num_classes=20, embedding_dim=8,
                            ctx=ParallelContext.single(), seed=0)
    with pytest.raises(KeyError, match="unknown margin 'arcfce'"):
        _head(margin="arcfce")
    with pytest.raises(ValueError, match="sample_rate"):
        _head(sample_rate=0.0)
    with pytest.raises(ValueError, match="world_size > 1"):
        HEADS.get("softmax_dense")(_cfg(), num_classes=20, embedding_dim=8,
                                   ctx=ParallelContext(rank=0, world_size=2), seed=0)


def test_bf16_embeddings_fp32_accumulation_and_safe_at_cos_one():
    head = _head()
    emb = head.weight.detach()[:4].clone()  # cos = 1 exactly (up to rounding) with the targets
    labels = torch.arange(4)
    e32 = emb.clone().requires_grad_(True)
    l32 = head(e32, labels).loss
    l32.backward()
    e16 = emb.to(torch.bfloat16).requires_grad_(True)
    l16 = head(e16, labels).loss
    l16.backward()
    assert l16.dtype == torch.float32 and torch.isfinite(l16)
    assert torch.isfinite(e16.grad.float()).all() and torch.isfinite(head.weight.grad).all()
    assert abs(l16.item() - l32.item()) <= 0.05 * abs(l32.item()) + 0.05


def test_scores_and_local_weight_contract():
    head = _head(margin="subcenter_arcface", margin_params={"k": 3})
    w, start = head.local_weight()
    assert w.shape == (60, 8) and start == 0
    emb = torch.randn(5, 8)
    s = head.scores(emb)
    cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
    assert s.shape == (5, 20) and torch.allclose(s, cos.view(5, 20, 3).amax(-1), atol=1e-6)
