"""Spherical losses from (A, q, s) against formulas written out over all D outputs."""
import pytest
import torch

from xclass.heads.zloss.losses import SPHERICAL_LOSSES, batch_loss

D, m, K = 40, 6, 3


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    o = (torch.randn(m, D, generator=g, dtype=torch.float64) * 0.7 + 0.3).requires_grad_(True)
    y = torch.stack([torch.randperm(D, generator=g)[:K] for _ in range(m)])
    y[1, 2] = -100  # a padded label
    y[4, 1:] = -1
    return o, y


def _stats(o, y):
    mask = y >= 0
    A = o.gather(1, torch.where(mask, y, 0))
    return A, mask, (o * o).sum(1), o.sum(1)


def _written(name, o, y, **p):
    """Per-example losses written directly over the D outputs, averaged over real positives."""
    rows = []
    for j in range(m):
        pos = [int(c) for c in y[j] if c >= 0]
        oj = o[j]
        if name == "zloss":
            a, b = p.get("a", 1.0), p.get("b", 0.0)
            z = (oj - oj.mean()) / oj.std(unbiased=False)
            terms = [torch.log1p(torch.exp(a * (b - z[c]))) / a for c in pos]
        elif name == "squared":
            yv = torch.zeros(D, dtype=o.dtype)
            yv[pos] = 1.0
            rows.append(((oj - yv) ** 2).sum())
            continue
        elif name == "log_spherical":
            eps = p.get("eps", 1e-3)
            f = oj * oj + eps
            terms = [-torch.log(f[c] / f.sum()) for c in pos]
        else:
            f = 1 + oj + oj * oj / 2
            terms = [-torch.log(f[c] / f.sum()) for c in pos]
        rows.append(torch.stack(terms).mean())
    return torch.stack(rows).mean()


CASES = [("zloss", {}), ("zloss", {"a": 3.0, "b": 2.0}), ("zloss", {"a": 0.3, "b": 5.0}),
         ("squared", {}), ("log_spherical", {"eps": 1e-2}), ("log_taylor", {})]


def test_cases_cover_registry():
    assert sorted({n for n, _ in CASES}) == SPHERICAL_LOSSES.names()


@pytest.mark.parametrize("name,params", CASES)
def test_loss_and_grad_match_written_formula(name, params):
    o, y = _data()
    A, mask, q, s = _stats(o, y)
    got = batch_loss(name, params, A, mask, q, s, D)
    (g_got,) = torch.autograd.grad(got, o)
    ref = _written(name, o, y, **params)
    (g_ref,) = torch.autograd.grad(ref, o)
    assert torch.allclose(got, ref, rtol=1e-13, atol=0)
    assert torch.allclose(g_got, g_ref, rtol=1e-11, atol=1e-14)


def test_zloss_invariants():
    """Rows of dL/do sum to 0 and are orthogonal to o; loss invariant to o -> alpha o + beta."""
    o, y = _data(1)
    A, mask, q, s = _stats(o, y)
    L = batch_loss("zloss", {"a": 2.0, "b": 1.0}, A, mask, q, s, D)
    (G,) = torch.autograd.grad(L, o)
    scale = (G.abs().sum(1) * o.abs().max(1).values).max()
    assert float(G.sum(1).abs().max() / G.abs().sum(1).max()) < 1e-14
    assert float((G * o.detach()).sum(1).abs().max() / scale) < 1e-14
    with torch.no_grad():
        beta = torch.randn(m, 1, dtype=torch.float64) * 5
        o2 = 3.7 * o + beta
        L2 = batch_loss("zloss", {"a": 2.0, "b": 1.0}, *_stats(o2, y), D)
    assert abs(float(L2 - L)) < 1e-14 * abs(float(L))


def test_zloss_closed_form_gradient():
    """dL/dA_k = -g_k/(K sigma), dL/dq = sum g z/(2 K D sigma^2),
    dL/ds = sum [g/(K D sigma) - g z mu/(K D sigma^2)], g = sigmoid(a (b - z)); K = K_j per row."""
    o, y = _data(2)
    a, b = 3.0, 2.0
    A, mask, q, s = _stats(o.detach(), y)
    A, q, s = A.requires_grad_(True), q.requires_grad_(True), s.requires_grad_(True)
    L = batch_loss("zloss", {"a": a, "b": b}, A, mask, q, s, D)
    gA, gq, gs = torch.autograd.grad(L, (A, q, s))
    mu = s.detach() / D
    sig = (q.detach() / D - mu ** 2).sqrt()
    z = (A.detach() - mu[:, None]) / sig[:, None]
    g = torch.sigmoid(a * (b - z)) * mask
    Kj = mask.sum(1, keepdim=True).double()
    ref_A = -g / (Kj * sig[:, None]) / m
    ref_q = (g * z / (2 * Kj * D * sig[:, None] ** 2)).sum(1) / m
    ref_s = (g / (Kj * D * sig[:, None]) - g * z * mu[:, None] / (Kj * D * sig[:, None] ** 2)).sum(1) / m
    assert torch.allclose(gA, ref_A, rtol=1e-12, atol=1e-17)
    assert torch.allclose(gq, ref_q, rtol=1e-12, atol=1e-17)
    assert torch.allclose(gs, ref_s, rtol=1e-12, atol=1e-17)


def test_zloss_no_softplus_threshold_error():
    """A target far below the mean with a=3, b=2 (a(b - z) > 20): exact log(1 + e^x)/a."""
    o = torch.zeros(1, D, dtype=torch.float64)
    o[0, 1:] = torch.linspace(-1, 1, D - 1, dtype=torch.float64)
    o[0, 0] = -8.0
    A, mask, q, s = _stats(o, torch.tensor([[0]]))
    got = batch_loss("zloss", {"a": 3.0, "b": 2.0}, A, mask, q, s, D)
    z = (o[0, 0] - o.mean()) / o.std(unbiased=False)
    x = 3.0 * (2.0 - z)
    assert float(x) > 20
    assert abs(float(got - torch.log1p(torch.exp(x)) / 3.0)) < 1e-13


def test_degenerate_and_empty_rows_are_zero_not_nan():
    o = torch.randn(3, D, dtype=torch.float64)
    o[0] = 0.25  # all outputs equal: sigma = 0
    o.requires_grad_(True)
    y = torch.tensor([[3, 5], [-100, -100], [1, 2]])
    L = batch_loss("zloss", {}, *_stats(o, y), D)
    (G,) = torch.autograd.grad(L, o)
    assert torch.isfinite(L) and torch.isfinite(G).all()
    assert float(G[0].abs().max()) == 0.0 and float(G[1].abs().max()) == 0.0
    # mean over the two rows that have positives; the degenerate row contributes 0
    one = batch_loss("zloss", {}, *_stats(o[2:].detach(), y[2:]), D)
    assert torch.allclose(L, one / 2, rtol=1e-14)
