"""Mechanics of the Z-loss heads: formula, bookkeeping, maintenance, state, prediction."""
import pytest
import torch

from tests.zloss.helpers import D, build, d, optim_cfg, rel, task_batches
from xclass.heads.base import HEADS
from xclass.heads.zloss import maintenance as mt

ZHEADS = [n for n in HEADS.names() if n.startswith("zloss")]


def _trained(steps=60, K=3, wd=0.0, **params):
    head = build("zloss_efficient", **params)
    opt = head.make_optimizer(optim_cfg(0.5, wd))
    for H, y in task_batches(steps, K, seed=11):
        head(H.clone().requires_grad_(True), y).loss.backward()
        opt.step()
    return head


def test_registry_has_both_heads():
    assert {"zloss", "zloss_efficient"} <= set(ZHEADS)


@pytest.mark.parametrize("name", ZHEADS)
def test_head_loss_and_grads_match_written_zloss(name):
    """Loss and dL/d emb of every zloss head equal the Z-loss written over O = [H, 1] W^T."""
    head = build(name, a=2.0, b=1.0)
    H, y = task_batches(1, 3, seed=5, pad=True)[0]
    emb = H.clone().requires_grad_(True)
    out = head(emb, y)
    out.loss.backward()
    W = head.full_local_weight()
    e2 = H.clone().requires_grad_(True)
    O = torch.cat([e2, torch.ones(len(H), 1, dtype=H.dtype)], 1) @ W.t()
    z = (O - O.mean(1, keepdim=True)) / O.std(1, unbiased=False, keepdim=True)
    rows = [torch.stack([torch.log1p(torch.exp(2.0 * (1.0 - z[j, c]))) / 2.0 for c in y[j] if c >= 0]).mean()
            for j in range(len(H))]
    ref = torch.stack(rows).mean()
    ref.backward()
    assert rel(out.loss.detach(), ref.detach()) < 1e-13
    assert rel(emb.grad, e2.grad) < 1e-12


def test_bookkeeping_and_wbar_constant_for_zloss():
    """Q = W^T W, w_bar = W^T 1, U Uinv = I after training; w_bar unchanged by Z-loss steps."""
    head = build("zloss_efficient", resync_on_save=False)
    wbar0 = head.wbar.clone()
    head = _trained(resync_on_save=False)
    W = head.full_local_weight()
    assert rel(head.Q, W.t() @ W) < 1e-12
    assert rel(head.wbar, W.sum(0)) < 1e-10 * float(W.abs().sum(0).max() / W.sum(0).abs().max())
    assert float((head.wbar - wbar0).abs().max()) < 1e-13 * float(W.abs().max())
    assert rel(head.U @ head.Uinv, torch.eye(d + 1, dtype=torch.float64)) < 1e-12


def test_wbar_moves_under_weight_decay():
    head = build("zloss_efficient")
    w0 = head.wbar.clone()
    head = _trained(wd=0.05)
    assert rel(head.wbar, w0) > 1e-3


@pytest.mark.parametrize("op", ["stabilise", "unfactorise", "fold_omega", "resync"])
def test_maintenance_keeps_w(op):
    head = _trained()
    mt.unfactorise(head)  # U = I; then an equivalent state with U = diag(sv) far out of band
    sv = torch.ones(d + 1, dtype=torch.float64)
    sv[0], sv[-1] = 0.2, 3.0
    head.U.copy_(torch.diag(sv))
    head.Uinv.copy_(torch.diag(1 / sv))
    head.V.div_(sv)
    mt.resync(head)
    W0, Q0 = head.full_local_weight(), head.Q.clone()
    if op == "stabilise":
        assert mt.stabilise(head, (0.5, 2.0)) == 2
        sv = torch.linalg.svdvals(head.U)
        assert float(sv.min()) >= 0.5 - 1e-12 and float(sv.max()) <= 2.0 + 1e-12
    elif op == "unfactorise":
        mt.unfactorise(head)
        assert torch.equal(head.U, torch.eye(d + 1, dtype=torch.float64))
    elif op == "fold_omega":
        head.omega.add_(0.3)
        mt.resync(head)
        W0, Q0 = head.full_local_weight(), head.Q.clone()
        assert mt.fold_omega(head, ratio=0.0) and float(head.omega.abs().max()) == 0.0
    else:
        mt.resync(head)
    assert rel(head.full_local_weight(), W0) < 1e-12
    assert rel(head.Q, Q0) < 1e-12
    assert rel(head.U @ head.Uinv, torch.eye(d + 1, dtype=torch.float64)) < 1e-12


def test_factored_loss_invariant_to_scale_and_shift_of_outputs():
    """W -> alpha W and omega -> omega + delta (adds delta.h to every output), with Q, w_bar
    moved consistently (Q, w_bar and U move with them): the Z-loss does not change."""
    head = _trained()
    H, y = task_batches(1, 3, seed=9)[0]
    L0, o0 = head(H, y).loss.detach(), head.scores(H)
    delta = torch.randn(d + 1, dtype=torch.float64)
    Dn = head.V.shape[0]
    head.Q.add_(torch.outer(head.wbar, delta) + torch.outer(delta, head.wbar) + Dn * torch.outer(delta, delta))
    head.wbar.add_(Dn * delta)
    head.omega.add_(delta)
    L1 = head(H, y).loss.detach()
    alpha = 37.5
    for t, f in ((head.U, alpha), (head.Uinv, 1 / alpha), (head.omega, alpha), (head.Q, alpha ** 2), (head.wbar, alpha)):
        t.mul_(f)
    L2 = head(H, y).loss.detach()
    assert rel(L1, L0) < 1e-12 and rel(L2, L0) < 1e-12
    Hb = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], 1)
    assert rel(head.scores(H), alpha * (o0 + (Hb @ delta)[:, None])) < 1e-12


def test_state_dict_round_trip_is_exact_and_training_continues_identically():
    a = _trained(steps=30)
    sd = a.state_dict()
    b = build("zloss_efficient", seed=123)
    b.load_state_dict(sd)
    for k, v in b.state_dict().items():
        assert torch.equal(v, sd[k]), k
    oa, ob = a.make_optimizer(optim_cfg(0.5)), b.make_optimizer(optim_cfg(0.5))
    for H, y in task_batches(20, 3, seed=12):
        for h, o in ((a, oa), (b, ob)):
            h(H.clone().requires_grad_(True), y).loss.backward()
            o.step()
    assert torch.equal(a.V, b.V) and torch.equal(a.Q, b.Q) and torch.equal(a.U, b.U)


def test_lr_zero_changes_nothing_and_keeps_counter():
    head = _trained(steps=5)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    opt = head.make_optimizer(optim_cfg(0.0))
    H, y = task_batches(1, 3, seed=2)[0]
    head(H.clone().requires_grad_(True), y).loss.backward()
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    assert not head._pending


def test_microbatch_accumulation_equals_full_batch_step():
    """Two backward() calls on halves (loss weighted 1/2 each) then one step == one full-batch step."""
    full, acc = build("zloss_efficient"), build("zloss_efficient")
    of, oa = full.make_optimizer(optim_cfg(0.5, 0.01)), acc.make_optimizer(optim_cfg(0.5, 0.01))
    for H, y in task_batches(5, 3, seed=13, pad=True):
        full(H.clone().requires_grad_(True), y).loss.backward()
        of.step()
        for sl in (slice(0, 8), slice(8, 16)):
            (0.5 * acc(H[sl].clone().requires_grad_(True), y[sl]).loss).backward()
        oa.step()
    assert rel(acc.full_local_weight(), full.full_local_weight()) < 1e-12


@pytest.mark.parametrize("name", ZHEADS)
def test_scores_and_blockwise_topk_match_brute_force(name):
    head = build(name) if name == "zloss" else _trained(steps=20)
    H, _ = task_batches(1, 1, seed=6)[0]
    W = head.full_local_weight()
    brute = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], 1) @ W.t()
    assert rel(head.scores(H), brute) < 1e-12
    v, i = head.topk(H, 5, block=7)
    bv, bi = brute.topk(5, dim=1)
    assert torch.allclose(v, bv, rtol=1e-12) and torch.equal(i, bi)
    cw, start = head.local_weight()
    assert cw.shape == (D, d) and start == 0
    assert rel(head.local_bias(), W[:, -1]) < 1e-12


def test_bad_config_and_labels_name_the_problem():
    with pytest.raises(KeyError, match="bogus"):
        build("zloss_efficient", bogus=1)
    with pytest.raises(KeyError, match="spherical loss"):
        build("zloss", loss="nope")
    head = build("zloss_efficient")
    with pytest.raises(ValueError, match="num_classes"):
        head(torch.randn(2, d, dtype=torch.float64), torch.tensor([1, D]))


def test_backward_after_step_is_refused():
    head = build("zloss_efficient")
    opt = head.make_optimizer(optim_cfg(0.5))
    H, y = task_batches(2, 1, seed=3)[0], task_batches(2, 1, seed=3)[1]
    out1 = head(H[0].clone().requires_grad_(True), H[1])
    head(y[0].clone().requires_grad_(True), y[1]).loss.backward()
    opt.step()
    with pytest.raises(RuntimeError, match="optimizer step"):
        out1.loss.backward()


def test_merge_shards_resplits_a_checkpoint_to_another_world_size():
    """A 1-rank checkpoint re-split for rank 1 of 3, and 3 shards merged back to one rank
    (xclass.train.reshard hook): the materialised W rows are preserved."""
    from xclass.parallel import ParallelContext

    src = _trained(steps=20)
    W = src.full_local_weight()
    piece = [(0, D, {"head": src.state_dict(), "optimizer": {"lr": 0.5, "weight_decay": 0.0}})]
    shards = []
    for r in range(3):
        h = build("zloss_efficient", ctx=ParallelContext(rank=r, world_size=3, group=None))
        h.load_state_dict(h.merge_shards(piece)["head"])
        assert rel(h.full_local_weight(), W[h.start:h.end]) < 1e-14
        shards.append((h.start, h.end, {"head": h.state_dict(), "optimizer": {}}))
    back = build("zloss_efficient", seed=5)
    back.load_state_dict(back.merge_shards(shards[::-1])["head"])
    assert rel(back.full_local_weight(), W) < 1e-14
    W2 = back.full_local_weight()
    assert rel(back.Q, W2.t() @ W2) < 1e-13
