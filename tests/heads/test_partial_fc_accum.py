"""Partial FC over micro-batches: each forward samples (shared negatives of the step + its own
positives) and the step updates the union of the sampled rows with the summed gradients, exactly
what a dense weight would accumulate there; rows outside the union and their state stay untouched.
The clipper scales the sampled rows' gradient like any head gradient."""
import copy
import types

import torch

from tests.heads.cases import SGD, head_cfg
from xclass.parallel import ParallelContext
from xclass.heads.base import HEADS
from xclass.heads.sampling import sample_classes
from xclass.train.clip import clip_gradients

C, D, B = 40, 6, 8


def _head(rate=0.3, margin="arcface", params=None):
    cfg = head_cfg(dict(margin=margin, params=params or {}), rate)
    return HEADS.get("margin")(cfg, num_classes=C, embedding_dim=D, ctx=ParallelContext.single(), seed=5)


def _micro(j):
    g = torch.Generator().manual_seed(100 + j)
    return torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)


def _one_micro(head, j):
    """(sampled rows, their gradient, embedding gradient) of micro-batch j alone, on a copy."""
    h = copy.deepcopy(head)
    emb, labels = _micro(j)
    e = emb.clone().requires_grad_(True)
    h(e, labels).loss.backward()
    rows, leaf = h.active
    return rows, leaf.grad.clone(), e.grad.clone()


def test_accumulated_step_equals_summed_micro_batches():
    head = _head()
    w0 = head.weight.detach().clone()
    parts = [_one_micro(head, j) for j in range(3)]
    opt = head.make_optimizer(SGD)
    for j in range(3):
        emb, labels = _micro(j)
        e = emb.clone().requires_grad_(True)
        head(e, labels).loss.backward()
        torch.testing.assert_close(e.grad, parts[j][2], rtol=0, atol=0)  # a micro-batch sees only its own rows
    # dense reference: scatter every micro-batch's row gradient into a full-size gradient
    g_full = torch.zeros_like(w0)
    for rows, g, _ in parts:
        g_full.index_add_(0, rows, g)
    union = torch.unique(torch.cat([p[0] for p in parts]))
    rows, leaf = head.active
    assert torch.equal(rows, union)
    torch.testing.assert_close(leaf.grad, g_full[union], rtol=1e-6, atol=1e-7)
    # the negatives are shared by the micro-batches of a step (same seed and step)
    negs = sample_classes(0, C, torch.full((1,), -1), 0.3, 5, 0)
    assert set(negs.tolist()) <= set(union.tolist())
    assert opt.step()
    # torch.optim.SGD on the union rows with the summed gradient (first step: momentum = gradient)
    expected = w0.clone()
    expected[union] -= SGD.lr * (g_full[union] + SGD.weight_decay * w0[union])
    torch.testing.assert_close(head.weight.detach(), expected, rtol=1e-6, atol=1e-7)
    untouched = torch.ones(C, dtype=torch.bool)
    untouched[union] = False
    assert untouched.any() and torch.equal(head.weight.detach()[untouched], w0[untouched])
    assert torch.equal(opt.state["weight"]["momentum"][untouched], torch.zeros(int(untouched.sum()), D))
    assert head.active is None  # the step consumed the samples


def test_accumulation_of_subcenter_rows():
    head = _head(0.4, "subcenter_arcface", {"k": 2})
    parts = [_one_micro(head, j) for j in range(2)]
    for j in range(2):
        emb, labels = _micro(j)
        head(emb.requires_grad_(True), labels).loss.backward()
    g_full = torch.zeros_like(head.weight)
    for rows, g, _ in parts:
        g_full.index_add_(0, rows, g)
    rows, leaf = head.active
    assert torch.equal(rows, torch.unique(torch.cat([p[0] for p in parts])))
    torch.testing.assert_close(leaf.grad, g_full[rows], rtol=1e-6, atol=1e-7)


def test_clip_scales_the_sampled_rows():
    head = _head()
    opt = head.make_optimizer(SGD)
    enc = torch.nn.Linear(D, D)
    for j in range(2):
        emb, labels = _micro(j)
        head(enc(emb), labels).loss.backward()
    before = float(head.active[1].grad.norm())
    enc_before = float(torch.cat([p.grad.reshape(-1) for p in enc.parameters()]).norm())
    s = types.SimpleNamespace(head=head, head_opt=opt, engine=types.SimpleNamespace(module=enc),
                              uses_deepspeed=False)
    total = clip_gradients(s, 0.01, ParallelContext.single())
    assert abs(total - (before ** 2 + enc_before ** 2) ** 0.5) < 1e-4 * total
    assert before > 0.01
    assert abs(float(head.active[1].grad.norm()) - 0.01) < 1e-6
