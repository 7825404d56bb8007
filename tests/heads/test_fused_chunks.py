"""The fused head's CPU forward statistics (xclass/heads/fused_chunks.py): the bounded form for
cosine margins (shift 0, or the smallest shift keeping the sum finite when s is large) and its
online fallback for rows whose sums left fp32's normal range give the log-sum-exp and the logit
sum of a float64 dense computation; the online form (raw logits) as well."""
import math

import pytest
import torch
import torch.nn.functional as F

from xclass.heads import fused_chunks as FC
from xclass.heads.fused import FusedSpec


def _dense(e, w, t, zt, s, k, normalized):
    """float64 reference: (logsumexp [B], sum of logits [B]) with the target column = zt."""
    wn = F.normalize(w.double(), dim=1) if normalized else w.double()
    z = (s * (e.double() @ wn.t())).view(e.shape[0], -1, k).amax(2)
    rows = (t >= 0).nonzero().squeeze(1)
    z[rows, t[rows]] = zt.double()[rows]
    return torch.logsumexp(z, 1), z.sum(1)


CASES = [  # (s, K, normalized, label smoothing, cosines far below the bound in half the rows)
    (64.0, 1, True, 0.0, False), (64.0, 1, True, 0.1, False), (30.0, 3, True, 0.1, False),
    (100.0, 1, True, 0.0, False), (100.0, 1, True, 0.1, False),  # shifted: e^s would overflow
    (95.0, 1, True, 0.0, True), (95.0, 2, True, 0.1, True),  # sums below the normal range
    (1.0, 1, False, 0.1, False),  # raw logits: the online form
]


@pytest.mark.parametrize("s,k,normalized,ls,far", CASES)
def test_forward_stats_equal_a_float64_logsumexp(monkeypatch, s, k, normalized, ls, far):
    g = torch.Generator().manual_seed(7)
    b, c, d = 24, 301, 16
    e = F.normalize(torch.randn(b, d, generator=g), dim=1) if normalized else torch.randn(b, d, generator=g) * 30
    w = torch.randn(c * k, d, generator=g)
    t = torch.randint(0, c, (b,), generator=g)
    t[:2] = -1  # rows whose class lives on another rank
    zt = torch.randn(b, generator=g) * 10
    if far:  # every row of W along v, half the embeddings along -v: all their cosines near -1
        v = F.normalize(torch.randn(d, generator=g), dim=0)
        w = v.repeat(c * k, 1) + 1e-3 * w
        e[b // 2:] = -v
        zt[b // 2:] = -s - 5.0
    calls = []
    online = FC._online_stats
    monkeypatch.setattr(FC, "_online_stats", lambda *a: calls.append(a[0].shape[0]) or online(*a))
    spec = FusedSpec(s=s, k=k, normalized=normalized, smoothing=ls, n_cls=c, chunk=37)
    m, se, zs = FC.forward_stats_torch(e, w, t, zt, spec)
    lse, zsum = _dense(e, w, t, zt, s, k, normalized)
    assert torch.isfinite(se).all() and (se > 0).all()
    got = m.double() + se.double().log()
    assert float((got - lse).abs().max()) <= 2e-5 * max(1.0, float(lse.abs().max())), (got - lse).abs().max()
    if ls > 0:
        assert float((zs.double() - zsum).abs().max()) <= 1e-5 * float(zsum.abs().max())
    if not normalized:
        assert calls == [b]  # the online form over the whole batch
    elif far:
        assert calls == [b - b // 2]  # only the far rows fell back
    else:
        assert calls == []
    if normalized and s + math.log(c) <= FC.SUM_EXP_MAX and not far:
        assert float(m.abs().max()) == 0.0  # no shift at all: exp of the logits themselves
