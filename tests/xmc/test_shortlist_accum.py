"""The dual encoder's shortlist scores a subset of free label rows per forward; with gradient
accumulation the step must update the union of every micro-batch's rows with the summed gradient
(before, a later micro-batch replaced the earlier one's rows and their gradient was lost)."""
import copy

import torch

from tests.xmc.cases import CASES, batch, build
from xclass.parallel import ParallelContext

CASE = next(c for c in CASES if c["id"] == "dual_shortlist")


def _grads(head, micro):
    """(rows, row gradient) of one micro-batch on a copy of the head."""
    h = copy.deepcopy(head)
    emb, labels = micro
    h(emb, labels).loss.backward()
    rows, leaf = h.active
    return rows, leaf.grad.clone()


def test_shortlist_rows_accumulate_over_micro_batches():
    head = build(CASE, ParallelContext.single())
    emb, labels = batch(0)
    micros = [(emb[:4], labels[:4]), (emb[4:], labels[4:])]
    parts = [_grads(head, m) for m in micros]
    assert not torch.equal(parts[0][0], parts[1][0])  # the micro-batches score different rows
    for e, lab in micros:
        head(e, lab).loss.backward()
    full = torch.zeros_like(head.weight)
    for rows, g in parts:
        full.index_add_(0, rows, g)
    rows, leaf = head.active
    assert torch.equal(rows, torch.unique(torch.cat([p[0] for p in parts])))
    torch.testing.assert_close(leaf.grad, full[rows], rtol=1e-6, atol=1e-7)
    w0 = head.weight.detach().clone()
    opt = head.make_optimizer(CASE["optim"])
    opt.step()
    changed = (head.weight.detach() != w0).any(1).nonzero().squeeze(1)
    assert torch.equal(changed, rows)
