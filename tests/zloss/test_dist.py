"""Sharded Z-loss heads on 2 and 3 gloo ranks (3 = uneven class and batch split) equal the
single-process head on the concatenated batch: loss, dL/d emb, W after training, top-k."""
import pytest
import torch

from tests.distutil import run_on_ranks
from tests.zloss.helpers import M, build, optim_cfg, rel, task_batches
from xclass.parallel import ParallelContext

pytestmark = pytest.mark.dist
STEPS = 25


def _rows(ws, rank):
    sizes = [M // ws + (1 if r < M % ws else 0) for r in range(ws)]
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


def _train(ctx, name, K):
    head = build(name, ctx=ctx, seed=3)
    opt = head.make_optimizer(optim_cfg(0.5, 0.01))
    sl = _rows(ctx.world_size, ctx.rank)
    grads, losses = [], []
    for H, y in task_batches(STEPS, K, seed=5, pad=True):
        emb = H[sl].clone().requires_grad_(True)
        out = head(emb, y[sl])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        grads.append(emb.grad)
        losses.append(out.loss.detach())
    Hq = task_batches(1, 1, seed=8)[0][0]
    return {"W": head.full_local_weight(), "start": head.start, "grads": grads,
            "losses": torch.stack(losses), "topk": head.topk(Hq, 5, block=4), "sd": head.state_dict()}


@pytest.mark.parametrize("ws", [2, 3])
@pytest.mark.parametrize("name", ["zloss", "zloss_efficient"])
def test_sharded_equals_single_process(name, ws):
    K = 3
    ref = _train(ParallelContext.single(), name, K)
    res = run_on_ranks(_train, ws, name, K)
    assert [r["start"] for r in res] == sorted(r["start"] for r in res)
    W = torch.cat([r["W"] for r in res])
    assert rel(W, ref["W"]) < 1e-10
    for r, out in enumerate(res):
        assert rel(out["losses"], ref["losses"]) < 1e-12
        sl = _rows(ws, r)
        for g, g_ref in zip(out["grads"], ref["grads"]):
            # gradient-scale convention: world_size * dL/d emb_local
            assert rel(g / ws, g_ref[sl]) < 1e-10
        assert torch.allclose(out["topk"][0], ref["topk"][0], rtol=1e-10)
        assert torch.equal(out["topk"][1], ref["topk"][1])
    if name == "zloss_efficient":  # each rank keeps its own small factors; only V is split
        assert all(out["sd"]["V"].shape[0] == out["W"].shape[0] for out in res)
        Q = sum(out["sd"]["Q"] for out in res)
        assert rel(Q, ref["W"].t() @ ref["W"]) < 1e-10
