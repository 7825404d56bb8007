"""Every margin's dense reference against a formula written out here (fp32); gradient modes;
no NaN/Inf at cos = +-1 and cos > 1 in fp32 and bf16; ArcFace fallbacks; ElasticFace+ ranks;
AAM schedule."""
import math

import pytest
import torch
import torch.nn.functional as F

from xclass.losses import MARGINS, MarginAux
from xclass.losses.elastic import elastic_draws, plus_assign
from xclass.losses.reference import dense_margin_loss

B, C, D = 12, 7, 5


def _data(k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, w = torch.randn(B, D, generator=g), torch.randn(C * k, D, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    labels[3] = -100
    return emb, w, labels


def _cos(emb, w, k=1):
    c = F.normalize(emb, dim=1) @ F.normalize(w, dim=1).t()
    return c.view(B, C, k).amax(-1)


@pytest.mark.parametrize("name", MARGINS.names())
def test_implementation_matches_its_written_formula(name):
    """Every registered margin carries ``formula`` (its paper formula, written out next to it);
    the dense reference built from the implementation must give the same loss."""
    m = MARGINS.build(name)
    assert callable(getattr(m, "formula", None)), f"margin {name!r} has no written formula"
    emb, w, labels = _data(m.sub_centers)
    c = _cos(emb, w, m.sub_centers) if m.normalized else emb @ w.t()
    valid = labels >= 0
    if m.objective == "softmax":
        z = m.formula(c, labels)
        want = F.cross_entropy(z[valid], labels[valid])
        got = dense_margin_loss(emb, labels, w, m)
    else:  # binary objectives write out the loss itself
        b = torch.tensor([-5.0])
        want = m.formula(c, labels, bias=b)
        got = dense_margin_loss(emb, labels, w, m, bias=b)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)


def test_sphereface2_formula_by_hand():
    """The written SphereFace2 loss against a per-entry loop (lam 0.7, r 40, m 0.4, t 3, lw 50)."""
    m = MARGINS.build("sphereface2")
    emb, w, labels = _data()
    c, b = _cos(emb, w), -5.0
    g = 2 * ((c + 1) / 2) ** 3 - 1
    total = 0.0
    for i in range(B):
        if labels[i] < 0:
            continue
        for j in range(C):
            if j == labels[i]:
                total += 0.7 * math.log1p(math.exp(-(40 * (g[i, j] - 0.4) + b).item()))
            else:
                total += 0.3 * math.log1p(math.exp((40 * (g[i, j] + 0.4) + b).item()))
    want = total * 50 / 40 / int((labels >= 0).sum())
    assert abs(m.formula(c, labels, bias=b).item() - want) <= 1e-5 * abs(want)


def test_arcface_formula_by_hand():
    """One hand-computed ArcFace logit: cos = 0.6, m = 0.5, s = 64."""
    m = MARGINS.build("arcface")
    z = m.formula(torch.tensor([[0.6, 0.2]]), torch.tensor([0]))
    assert z[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.6) + 0.5), rel=1e-6)
    assert z[0, 1].item() == pytest.approx(64 * 0.2, rel=1e-6)


def _edge_cos(dtype):
    """[4, 3] cosines with exact +-1 and values just above 1 (as fp32/bf16 rounding produces)."""
    above = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype))
    rows = [[1.0, 0.3, -1.0], [-1.0, 1.0, 0.0], [above.item(), 0.5, 0.2], [0.999999, -0.999999, 1.0]]
    return torch.tensor(rows, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad", ["exact", "straight_through"])
@pytest.mark.parametrize("name", MARGINS.names())
def test_no_nan_or_inf_at_cos_pm1(name, grad, dtype):
    m = MARGINS.build(name, grad=grad)
    k = m.sub_centers
    cos = _edge_cos(dtype).repeat_interleave(k, dim=1).requires_grad_(True)
    target = torch.tensor([0, 0, 0, 2])
    valid = torch.ones(4, dtype=torch.bool)
    tc = cos.detach().float().view(4, -1, k).amax(-1).gather(1, target[:, None]).squeeze(1)
    out = m(cos, target, MarginAux(valid=valid, target_cos=tc))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad.float()).all()


@pytest.mark.parametrize("name", ["arcface", "combined", "sphereface", "aam", "elastic_arc", "cosface"])
def test_straight_through_gradient_is_s_everywhere(name):
    m = MARGINS.build(name, grad="straight_through")
    cos = _edge_cos(torch.float32).requires_grad_(True)
    target = torch.tensor([0, 1, 0, 2])
    m(cos, target, MarginAux(valid=torch.ones(4, dtype=torch.bool))).sum().backward()
    assert torch.allclose(cos.grad, torch.full_like(cos, m.s))


def test_exact_gradient_matches_closed_form_autograd():
    s, mm = 64.0, 0.5
    m = MARGINS.build("arcface", fallback="none")
    ct = torch.linspace(-0.95, 0.95, 9)
    cos = torch.stack([ct, torch.zeros(9)], 1).requires_grad_(True)
    m(cos, torch.zeros(9, dtype=torch.long), MarginAux())[:, 0].sum().backward()
    c2 = ct.clone().requires_grad_(True)
    (s * torch.cos(torch.acos(c2) + mm)).sum().backward()
    assert torch.allclose(cos.grad[:, 0], c2.grad, rtol=1e-5)
    # analytic: s (cos m + sin m cos(theta) / sin(theta))
    analytic = s * (math.cos(mm) + math.sin(mm) * ct / torch.sqrt(1 - ct ** 2))
    assert torch.allclose(cos.grad[:, 0], analytic, rtol=1e-4)


@pytest.mark.parametrize("fallback", ["none", "insightface", "continuous"])
def test_arcface_fallback_at_pi_minus_m(fallback):
    mm, eps = 0.5, 1e-3
    m = MARGINS.build("arcface", s=1.0, m=mm, fallback=fallback)
    th = torch.tensor([math.pi - mm - eps, math.pi - mm + eps])
    c = torch.cos(th)
    got = m(torch.stack([c, c], 1), torch.zeros(2, dtype=torch.long), MarginAux())[:, 0]
    assert abs(got[0] - math.cos(math.pi - eps)) < 1e-5  # the margin branch below the switch
    want = {"none": math.cos(math.pi + eps), "insightface": c[1] - mm * math.sin(mm),
            "continuous": c[1] - 1 - math.cos(math.pi - mm)}[fallback]
    assert abs(got[1] - want) < 1e-5
    if fallback == "continuous":
        assert abs(got[1] - got[0]) < 3 * eps
    if fallback == "insightface":
        assert abs(got[1] - got[0]) > 0.1  # the paper-code fallback jumps


def test_elastic_plus_rank_correlation_is_minus_one():
    valid = torch.tensor([True, True, False, True, True, True])
    tc = torch.tensor([0.1, 0.9, 0.0, 0.5, 0.3, 0.7])
    margins = 0.5 + 0.05 * elastic_draws(6, seed=7, step=3)
    out = plus_assign(margins, tc, valid)
    v = valid.nonzero().squeeze(1)
    rank_c = torch.argsort(torch.argsort(tc[v])).float()
    rank_m = torch.argsort(torch.argsort(out[v])).float()
    rho = 1 - 6 * ((rank_c - rank_m) ** 2).sum() / (len(v) * (len(v) ** 2 - 1))
    assert rho.item() == -1.0
    assert out[2] == margins[2]  # ignored rows keep their draw
    assert torch.equal(torch.sort(out[v]).values, torch.sort(margins[v]).values)


def test_aam_margin_schedule_matches_wespeaker_formula():
    m0, m1, start, fix = 0.0, 0.2, 100, 300
    m = MARGINS.build("aam", m=m1, m_start=m0, warmup_start=start, warmup_end=fix)
    n = fix - start
    for i in [start - 1, start, (start + fix) // 2, fix, fix + 1]:
        want = m0 if i < start else (m1 if i > fix else m0 + (m1 - m0) * (1 - 0.001 ** ((i - start) / n)))
        assert abs(m.margin_at(i) - want) < 1e-12
    lin = MARGINS.build("aam", m=m1, m_start=m0, warmup_start=start, warmup_end=fix, schedule="linear")
    assert abs(lin.margin_at(200) - 0.1) < 1e-12


def test_unknown_grad_mode_is_an_error():
    with pytest.raises(ValueError, match="grad mode"):
        MARGINS.build("arcface", grad="sometimes")(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), MarginAux())
