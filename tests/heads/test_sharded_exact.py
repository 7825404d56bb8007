"""The sharded head on 1 (no process group), 2 and
3 gloo ranks (uneven class split, ragged batches {5, 2, 1}, ignored rows, labels on other ranks)
equals the dense single-process head on the concatenated batch: loss, d/d emb, d/d W shard,
d/d b, two optimizer steps; Partial FC equals dense restricted to the sampled set (also when a
rank's sample is empty) and leaves unsampled rows and their optimizer state bitwise untouched;
an inf on one rank skips everywhere."""
import pytest
import torch

from tests.distutil import cat_ranks, run_on_world
from tests.heads import cases as K
from xclass.parallel import ParallelContext
from xclass.heads.base import HEADS
from xclass.heads.sampling import sample_classes
from xclass.losses import MARGINS
from xclass.losses.reference import dense_margin_loss

ALL = K.CASES + K.PFC_CASES


def close(a, b, tol=1e-5):
    """max |a - b| <= tol * max(1, max |b|): fp32, relative to the tensor's scale."""
    assert a.shape == b.shape, (a.shape, b.shape)
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"max err {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["ws1_nogroup", "ws2", "ws3"])
def ranked(request):
    return request.param, run_on_world(K.run_all, request.param)


def _dense(i, case):
    ctx = ParallelContext.single()
    head = HEADS.get("softmax_dense")(K.head_cfg(case), num_classes=K.C, embedding_dim=K.D, ctx=ctx, seed=K.SEED)
    opt = head.make_optimizer(K.ADAMW if case.get("optim") == "adamw" else K.SGD)
    out = {"w0": head.weight.detach().clone()}
    for step in range(2):
        emb, labels = K.batch(i, step)
        e = emb.clone().requires_grad_(True)
        loss = head(e, labels).loss
        loss.backward()
        out[f"loss{step}"] = loss.detach()
        if step == 0:
            out["emb_grad"], out["w_grad"] = e.grad.clone(), head.weight.grad.clone()
            out["b_grad"] = None if head.bias is None else head.bias.grad.clone()
        opt.step()
        opt.zero_grad()
        out[f"w{step + 1}"] = head.weight.detach().clone()
    return out


@pytest.mark.dist
@pytest.mark.parametrize("case", K.CASES, ids=[c["id"] for c in K.CASES])
def test_sharded_equals_dense(ranked, case):
    ws, results = ranked
    res = [r[case["id"]] for r in results]
    ref = _dense(K.CASES.index(case), case)
    assert torch.equal(cat_ranks(res, "w0"), ref["w0"]), "init must depend on the global class id only"
    for r in res:
        assert torch.equal(r["loss0"], res[0]["loss0"]), "loss must be replicated"
    close(res[0]["loss0"], ref["loss0"])
    close(res[0]["loss1"], ref["loss1"])
    # convention: the head sends W * d loss / d emb_local (DP averaging then gives the dense gradient)
    close(cat_ranks(res, "emb_grad") / ws, ref["emb_grad"])
    close(cat_ranks(res, "w_grad"), ref["w_grad"])
    if ref["b_grad"] is not None:
        for r in res:
            close(r["b_grad"], ref["b_grad"])
    close(cat_ranks(res, "w2"), ref["w2"])


def _global_sample(i, case, step):
    _, labels = K.batch(i, step, case.get("low", False))
    return sample_classes(0, K.C, labels[labels >= 0], case["rate"], K.SEED, step)


@pytest.mark.dist
@pytest.mark.parametrize("case", K.PFC_CASES, ids=[c["id"] for c in K.PFC_CASES])
def test_partial_fc_exact_and_sparse(ranked, case):
    ws, results = ranked
    i = 100 + K.PFC_CASES.index(case)
    res = [r[case["id"]] for r in results]
    k = MARGINS.build(case["margin"], **case["params"]).sub_centers
    w0 = cat_ranks(res, "w0")
    rows = [torch.cat([r[f"rows{s}"] + r["start"] * k for r in res]) for s in range(2)]
    for s in range(2):  # the same global sample for every world size
        want = _global_sample(i, case, s)
        assert torch.equal(rows[s], (want[:, None] * k + torch.arange(k)).reshape(-1))
        assert rows[s].numel() < w0.shape[0], "the test must actually sample"
    # step 0 equals the dense head restricted to the sampled classes (labels remapped)
    if case.get("low") and ws > 1:  # the empty-shard cases: some rank samples no class at all
        assert min(r["rows0"].numel() for r in res) == 0 and min(r["rows1"].numel() for r in res) == 0
    emb, labels = K.batch(i, 0, case.get("low", False))
    cls = _global_sample(i, case, 0)
    w = w0[rows[0]].clone().requires_grad_(True)
    lab = torch.where(labels >= 0, torch.searchsorted(cls, labels.clamp(min=0)), labels)
    head = HEADS.get("margin")(K.head_cfg(case), num_classes=K.C, embedding_dim=K.D,
                               ctx=ParallelContext.single(), seed=K.SEED)
    bias = None if head.bias is None else head.bias.detach()
    loss = dense_margin_loss(emb, lab, w, head.margin, bias=bias, seed=K.SEED)
    loss.backward()
    close(res[0]["loss0"], loss.detach())
    w1 = cat_ranks(res, "w1")
    close(w1[rows[0]], w.detach() - K.SGD.lr * (w.grad + K.SGD.weight_decay * w.detach()))
    out0 = torch.ones(w0.shape[0], dtype=torch.bool)
    out0[rows[0]] = False
    assert torch.equal(w1[out0], w0[out0]), "unsampled rows must be bitwise unchanged"
    w2 = cat_ranks(res, "w2")
    mom1 = torch.cat([r["state1"]["momentum"] for r in res])
    mom2 = torch.cat([r["state2"]["momentum"] for r in res])
    assert torch.equal(mom1[out0], torch.zeros_like(mom1[out0]))
    out1 = torch.ones(w0.shape[0], dtype=torch.bool)
    out1[rows[1]] = False
    assert torch.equal(w2[out1], w1[out1]) and torch.equal(mom2[out1], mom1[out1]), \
        "rows outside step 2's sample (and their momentum) must be bitwise unchanged"


@pytest.mark.dist
def test_inf_on_one_rank_skips_on_all(ranked):
    ws, results = ranked
    for r in results:
        # step_count counts steps taken or skipped (the host knows it without a device read)
        assert r["skip"] == {"stepped": False, "unchanged": True, "step_count": 1}
