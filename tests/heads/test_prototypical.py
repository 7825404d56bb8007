"""Angular prototypical head: dense loop formula, hand-computed value, singleton handling, and
1/2/3 gloo ranks equal to the single-process loss on the concatenated batch (loss, gradients
with the W factor of the convention, one optimizer step)."""
from __future__ import annotations

import math
import types

import pytest
import torch

from tests.distutil import run_on_ranks
from xclass.parallel import ParallelContext
from xclass.heads.base import HEADS, IGNORE_INDEX
from xclass.heads.prototypical import angproto_loss

D = 5
SIZES = {1: [12], 2: [7, 5], 3: [6, 5, 1]}
SGD = types.SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, head_lr=None)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(12, D, generator=g)
    # speakers 3, 1, 7 with >= 2 rows; 9 and 4 single (skipped); one ignored row
    labels = torch.tensor([3, 1, 9, 3, 7, 1, 1, IGNORE_INDEX, 7, 4, 3, 7])
    return emb, labels


def loop_reference(emb, labels, w, b):
    """Written out: for each speaker with >= 2 rows (order of first row), query = first row,
    prototype = mean of its other rows; CE over w * cos + b with the speaker's own column."""
    order, rows = [], {}
    for i, y in enumerate(labels.tolist()):
        if y == IGNORE_INDEX:
            continue
        if y not in rows:
            order.append(y)
            rows[y] = []
        rows[y].append(i)
    spk = [y for y in order if len(rows[y]) >= 2]
    q = [emb[rows[y][0]] for y in spk]
    p = [sum(emb[i] for i in rows[y][1:]) / (len(rows[y]) - 1) for y in spk]
    total = 0.0
    for i in range(len(spk)):
        logit = [w[0] * torch.dot(q[i], p[j]) / (q[i].norm() * p[j].norm()) + b[0] for j in range(len(spk))]
        total = total - (logit[i] - torch.logsumexp(torch.stack(logit), 0))
    return total / len(spk)


def test_matches_loop_reference_loss_and_grads():
    emb, labels = _batch()
    w, b = torch.tensor([7.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    e1 = emb.clone().requires_grad_(True)
    loss, m = angproto_loss(e1, labels, w, b)
    loss.backward()
    w2, b2 = w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    ref = loop_reference(e2, labels, w2, b2)
    ref.backward()
    assert int(m["ap_speakers"]) == 3
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-4, atol=1e-6)
    # singleton speakers (rows 2 and 9) and the ignored row get no gradient
    assert e1.grad[[2, 7, 9]].abs().max() == 0


def test_hand_computed_orthogonal_speakers():
    # two speakers whose query and prototype are the same unit axis: cos = identity
    emb = torch.tensor([[1.0, 0], [0, 2.0], [3.0, 0], [0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    loss, m = angproto_loss(emb, labels, torch.tensor([10.0]), torch.tensor([-5.0]))
    # logits [[5, -5], [-5, 5]] -> CE = log(1 + e^-10)
    assert abs(float(loss) - math.log1p(math.exp(-10.0))) < 1e-7
    assert float(m["ap_acc"]) == 1.0


def test_no_speaker_with_two_rows_gives_zero_and_zero_grad():
    emb = torch.randn(3, D, requires_grad=True)
    w, b = torch.tensor([10.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    loss, m = angproto_loss(emb, torch.tensor([0, 1, 2]), w, b)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(m["ap_speakers"]) == 0
    assert emb.grad.abs().max() == 0 and w.grad.abs().max() == 0


def _head_cfg(name):
    params = {"margin": {}, "angproto": {"init_w": 7.0, "init_b": -2.0},
              "margin_angproto": {"init_w": 7.0, "init_b": -2.0, "ap_weight": 0.5}}[name]
    return types.SimpleNamespace(name=name, margin="aam", margin_params={"m": 0.2, "s": 30.0},
                                 sample_rate=1.0, label_smoothing=0.0, params=params)


def _rank_run(ctx, name):
    """This rank's slice of the batch: loss, emb grad, w/b grads and the values after one step."""
    emb, labels = _batch()
    sizes = SIZES[ctx.world_size]
    a = sum(sizes[:ctx.rank])
    e = emb[a:a + sizes[ctx.rank]].clone().requires_grad_(True)
    head = HEADS.get(name)(_head_cfg(name), num_classes=10, embedding_dim=D, ctx=ctx, seed=0)
    opt = head.make_optimizer(SGD)
    out = head(e, labels[a:a + sizes[ctx.rank]])
    out.loss.backward()
    ap = head if name == "angproto" else head.ap
    grads = (ap.w.grad.clone(), ap.b.grad.clone())
    opt.step()
    return {"loss": out.loss.detach(), "grad": e.grad, "wb_grad": grads, "wb": (ap.w.detach().clone(), ap.b.detach().clone())}


@pytest.mark.parametrize("name", ["angproto", "margin_angproto"])
def test_registered_heads_single_process_match_dense(name):
    res = _rank_run(ParallelContext.single(), name)
    emb, labels = _batch()
    w, b = torch.tensor([7.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    e = emb.clone().requires_grad_(True)
    ref = loop_reference(e, labels, w, b)
    if name == "margin_angproto":
        margin = HEADS.get("margin")(_head_cfg("margin"), num_classes=10, embedding_dim=D,
                                     ctx=ParallelContext.single(), seed=0)
        ref = margin(e, labels).loss + 0.5 * ref
    ref.backward()
    torch.testing.assert_close(res["loss"], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res["grad"], e.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res["wb_grad"][0], w.grad, rtol=1e-4, atol=1e-6)  # ap_weight is inside ref
    # one SGD step (momentum buffer starts at the gradient): w - lr * g
    torch.testing.assert_close(res["wb"][0], torch.tensor([7.0]) - 0.1 * w.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_equals_single_process(world):
    for name in ("angproto", "margin_angproto"):
        single = _rank_run(ParallelContext.single(), name)
        ranks = run_on_ranks(_rank_run, world, name)
        sizes = SIZES[world]
        for r, res in enumerate(ranks):
            a = sum(sizes[:r])
            torch.testing.assert_close(res["loss"], single["loss"], rtol=1e-5, atol=1e-6)
            # gradient-scale convention: W x the single-process gradient of this rank's rows
            torch.testing.assert_close(res["grad"], world * single["grad"][a:a + sizes[r]], rtol=1e-4, atol=1e-6)
            for x, y in zip(res["wb_grad"] + res["wb"], single["wb_grad"] + single["wb"]):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
