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


def _arc(c, m, s, fallback="insightface"):
    """ArcFace target written out: s cos(theta + m) while theta + m <= pi."""
    th = torch.acos(c.clamp(-1, 1))
    alt = c - m * math.sin(m) if fallback == "insightface" else c - 1 - math.cos(math.pi - m)
    return s * torch.where(th + m <= math.pi, torch.cos(th + m), alt)


def _formula_logits(name, emb, w, labels):
    """Logits [B, C] from the papers' formulas (defaults of each registered margin)."""
    oh = F.one_hot(labels.clamp(min=0), C).bool() & (labels >= 0)[:, None]
    if name == "softmax":
        return emb @ w.t()
    k = 3 if name in ("subcenter_arcface", "intertopk_subcenter") else 1
    c = _cos(emb, w, k)
    tgt = {"norm_softmax": lambda: 64 * c, "cosface": lambda: 64 * (c - 0.35),
           "arcface": lambda: _arc(c, 0.5, 64), "subcenter_arcface": lambda: _arc(c, 0.5, 64),
           "aam": lambda: _arc(c, 0.2, 32, "continuous")}
    if name == "combined":  # cos(theta + 0.3) - 0.2, continuous beyond theta = pi - 0.3
        th = torch.acos(c)
        t = torch.where(th + 0.3 <= math.pi, torch.cos(th + 0.3), c - math.cos(math.pi - 0.3) - 1) - 0.2
        tgt[name] = lambda: 64 * t
    if name == "sphereface":  # psi = (-1)^k cos(1.7 theta) - 2k, k = floor(1.7 theta / pi)
        th = torch.acos(c)
        kk = torch.floor(1.7 * th / math.pi)
        tgt[name] = lambda: 30 * ((-1) ** kk * torch.cos(1.7 * th) - 2 * kk)
    if name.startswith("elastic"):
        sig = {"elastic_arc": 0.05, "elastic_arc_plus": 0.0175, "elastic_cos": 0.05, "elastic_cos_plus": 0.02}[name]
        m = (0.5 if "arc" in name else 0.35) + sig * elastic_draws(B, 0, 0)
        if name.endswith("plus"):
            valid = labels >= 0
            tc = torch.where(valid, c.gather(1, labels.clamp(min=0)[:, None]).squeeze(1), torch.zeros(B))
            m = plus_assign(m, tc, valid)
        th = torch.acos(c)
        tgt[name] = lambda: 64 * (torch.cos(th + m[:, None]) if "arc" in name else c - m[:, None])
    if name == "intertopk_subcenter":  # WeSpeaker: 5 hardest non-targets get cos(theta - 0.06)
        nt = c.masked_fill(oh, -2.0)
        kth = nt.topk(5, dim=1).values[:, -1:]
        c = torch.where((nt >= kth) & ~oh, torch.cos(torch.acos(c) - 0.06), c)
        tgt[name] = lambda: _arc(c, 0.2, 32, "continuous")
    scale = {"intertopk_subcenter": 32, "arcface": 64, "subcenter_arcface": 64, "aam": 32, "sphereface": 30}.get(name, 64)
    return torch.where(oh, tgt[name](), scale * c)


@pytest.mark.parametrize("name", [n for n in MARGINS.names() if n != "sphereface2"])
def test_reference_matches_written_formula(name):
    m = MARGINS.build(name)
    emb, w, labels = _data(m.sub_centers)
    z = _formula_logits(name, emb, w, labels)
    valid = labels >= 0
    want = F.cross_entropy(z[valid], labels[valid])
    got = dense_margin_loss(emb, labels, w, m)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got, want)


def test_sphereface2_reference_matches_written_formula():
    m = MARGINS.build("sphereface2")  # lam 0.7, r 40, m 0.4, t 3, lw 50
    emb, w, labels = _data()
    c, b = _cos(emb, w), torch.tensor([-5.0])
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
    got = dense_margin_loss(emb, labels, w, m, bias=b)
    assert abs(got.item() - want) <= 1e-5 * abs(want)


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
