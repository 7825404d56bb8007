"""The factored head reproduces the dense Z-loss head's SGD trajectory (docs/zloss.md, notes 2-4)."""
import pytest
import torch

from tests.zloss.helpers import build, optim_cfg, rel, task_batches


def _train_pair(batches, fact_dtype, lr, wd, loss="zloss", ckpt_at=None, **params):
    """Train dense (float64) and factored heads side by side on the same batches.
    Returns (max rel error of the loss and dL/d emb over steps, rel error of W at the end, factored head)."""
    dense = build("zloss", loss=loss, **params)
    fact = build("zloss_efficient", loss=loss, dtype=fact_dtype, **params)
    od, of = dense.make_optimizer(optim_cfg(lr, wd)), fact.make_optimizer(optim_cfg(lr, wd))
    tdt = torch.float64 if fact_dtype == "float64" else torch.float32
    worst = 0.0
    for step, (H, y) in enumerate(batches):
        if step == ckpt_at:  # checkpoint round trip into a differently seeded fresh head
            sd, osd = fact.state_dict(), of.state_dict()
            fact = build("zloss_efficient", seed=99, loss=loss, dtype=fact_dtype, **params)
            fact.load_state_dict(sd)
            of = fact.make_optimizer(optim_cfg(0.0, 0.0))
            of.load_state_dict(osd)
        h = H.to(tdt)
        e1, e2 = h.double().clone().requires_grad_(True), h.clone().requires_grad_(True)
        l1, l2 = dense(e1, y).loss, fact(e2, y).loss
        l1.backward()
        l2.backward()
        worst = max(worst, rel(e2.grad, e1.grad), rel(l2.detach(), l1.detach()))
        od.step(), of.step(), od.zero_grad(), of.zero_grad()
    return worst, rel(fact.full_local_weight(), dense.full_local_weight()), fact


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_factored_matches_dense_1000_steps(K, dtype, tol):
    """1000 SGD steps with weight decay, padded multi-target labels, duplicate classes and a
    checkpoint save/load at step 500: W and dL/d emb match the float64 dense head."""
    batches = task_batches(1000, K, seed=K, pad=True)
    g_err, w_err, fact = _train_pair(batches, dtype, lr=0.5, wd=0.01, ckpt_at=500, a=1.0, b=0.0)
    assert g_err < tol and w_err < tol, (g_err, w_err)
    assert int(fact.n_updates) == 1000


@pytest.mark.parametrize("loss,lr,params", [("squared", 0.02, {}), ("log_spherical", 0.2, {"eps": 1e-2}),
                                            ("log_taylor", 0.5, {}), ("zloss", 0.5, {"a": 3.0, "b": 2.0})])
def test_other_spherical_losses_match_dense(loss, lr, params):
    batches = task_batches(300, 3, seed=7)
    g_err, w_err, _ = _train_pair(batches, "float64", lr=lr, wd=0.0, loss=loss, **params)
    assert g_err < 1e-9 and w_err < 1e-9, (g_err, w_err)


def test_singular_guard_dense_fallback_is_exact():
    """guard_tau=2 forces the exact O(D d^2) fallback step (docs/zloss.md, note 4) every step."""
    batches = task_batches(40, 3, seed=3)
    g_err, w_err, fact = _train_pair(batches, "float64", lr=0.5, wd=0.01, guard_tau=2.0)
    assert fact.dense_steps == 40
    assert g_err < 1e-11 and w_err < 1e-11


def _singular_lr(batches):
    """The lr that makes the first step's C = I - 2 lr H^T diag(gq) H exactly singular."""
    probe = build("zloss_efficient", init_std=1e-3)
    H, y = batches[0]
    probe(H.clone().requires_grad_(True), y).loss.backward()
    Hp, gq = probe._pending[0][0], probe._pending[0][4]
    lam = torch.linalg.eigvalsh(Hp.t() @ (gq[:, None] * Hp))
    return float(1.0 / (2.0 * lam.max()))


@pytest.mark.parametrize("tau,ok", [(1e-2, True), (0.0, False)])
def test_near_singular_step_guard_keeps_float32_exact(tau, ok):
    """A first step with min |eig(C)| ~ 1e-7 ruins float32 factors unless the guard takes the
    dense step (docs/zloss.md, note 4); with the guard off (tau=0) the test must see the damage."""
    batches = task_batches(30, 1, seed=4)
    lr = _singular_lr(batches) * (1 - 1e-7)
    g_err, w_err, fact = _train_pair(batches, "float32", lr=lr, wd=0.0, init_std=1e-3, guard_tau=tau)
    assert (fact.dense_steps >= 1) == ok
    assert (max(g_err, w_err) < 1e-4) == ok, (g_err, w_err)
