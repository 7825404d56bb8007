"""The autograd all-gather returns each rank the gradient of its own rows (ragged sizes)."""
import pytest
import torch

from tests.distutil import run_on_ranks
from xclass.parallel import collectives as C

pytestmark = pytest.mark.dist


def _sizes(ws):
    return [2 + r for r in range(ws)]  # ragged on purpose


def _gather_case(ctx):
    torch.manual_seed(0)
    full = torch.randn(sum(_sizes(ctx.world_size)), 3, dtype=torch.float64)
    w = torch.randn(full.shape[0], 3, dtype=torch.float64)
    start = sum(_sizes(ctx.world_size)[: ctx.rank])
    x = full[start : start + _sizes(ctx.world_size)[ctx.rank]].clone().requires_grad_(True)
    g = C.all_gather_with_grad(x, ctx.group)
    # the loss is the same global scalar on every rank; grads are summed across ranks
    (g * w).sum().backward()
    return g.detach(), x.grad, w[start : start + x.shape[0]]


@pytest.mark.parametrize("ws", [2, 3])
def test_all_gather_with_grad_ragged(ws):
    torch.manual_seed(0)
    full = torch.randn(sum(_sizes(ws)), 3, dtype=torch.float64)
    res = run_on_ranks(_gather_case, ws)
    for r, (g, grad, w_slice) in enumerate(res):
        assert torch.equal(g, full)
        # every rank computed d/dx of the same scalar: sum over ws copies = ws * w
        assert torch.allclose(grad, ws * w_slice)


def test_single_process_identity():
    x = torch.randn(4, 2, requires_grad=True)
    assert C.all_gather_with_grad(x, None) is x
    assert C.gather_sizes(4, None) == [4]
