"""XMC heads on 1 (no process group), 2 and 3 gloo ranks (uneven label split, ragged batches
{5, 2, 1} and label widths, labels on other ranks, a duplicated label, an all-padding row) equal
dense single-process formulas written out here: loss (2 steps), d/d emb (times W, the gradient
convention), d/d every label shard, the replicated tower's gradient after the head optimizer's
SUM all-reduce, and one optimizer step against torch.optim on the dense parameters."""
import pytest
import torch
import torch.nn.functional as F

from tests.distutil import cat_ranks, run_on_world
from tests.xmc import cases as K
from xclass.parallel import ParallelContext


def close(a, b, tol=2e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"max err {err:.3g} > {tol:g} * {scale:.3g}"


def positives(labels):
    return [sorted({int(x) for x in row if x >= 0}) for row in labels]


def dense_dual(q, E, labels, scale, normalize, cols=None):
    """DEXML decoupled softmax, written per positive:
    loss = mean_{i: P_i != {}} mean_{l in P_i} [log(exp(s_il) + sum_{j in A minus P_i} exp(s_ij)) - s_il],
    s = scale * cos(q, e) (or scale * <q, e>), A = all labels (or the active set ``cols``)."""
    if normalize:
        q, E = F.normalize(q, dim=1), F.normalize(E, dim=1)
    S = scale * q @ E.t()
    A = list(range(E.shape[0])) if cols is None else cols
    rows = []
    for i, P in enumerate(positives(labels)):
        if not P:
            continue
        neg = torch.tensor([j for j in A if j not in P], dtype=torch.int64)
        terms = [torch.logsumexp(torch.cat([S[i, l:l + 1], S[i, neg]]), 0) - S[i, l] for l in P]
        rows.append(torch.stack(terms).mean())
    return torch.stack(rows).mean()


def dense_ova(q, W, b, labels, p):
    """sum_l BCE(z_il, y_il) with pos_weight, mean over rows with labels (/ L for reduction mean)."""
    z = (p.get("scale", 1.0) * F.normalize(q, dim=1) @ F.normalize(W, dim=1).t()) if p.get("normalize") \
        else q @ W.t()
    z = z + b
    Y = torch.zeros_like(z)
    for i, P in enumerate(positives(labels)):
        Y[i, P] = 1.0
    per = F.binary_cross_entropy_with_logits(z, Y, pos_weight=torch.full((z.shape[1],), p.get("pos_weight", 1.0)),
                                             reduction="none").sum(1)
    valid = Y.sum(1) > 0
    loss = per[valid].sum() / valid.sum()
    return loss / z.shape[1] if p.get("reduction") == "mean" else loss


def torch_opt(params, cfg):
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def dense_reference(case, active=None):
    """Parameters of the single-process head, loss from the formulas above, torch.optim step."""
    head = K.build(case, ParallelContext.single())
    p = case["params"]
    tower = getattr(head, "tower", None)
    W = head.weight.detach().clone().requires_grad_(True) if getattr(head, "weight", None) is not None else None
    b = head.bias.detach().clone().requires_grad_(True) if getattr(head, "bias", None) is not None else None
    params = [t for t in (W, b) if t is not None] + (list(tower.parameters()) if tower else [])
    opt = torch_opt(params, case["optim"])
    out = {}
    for step in range(2 if active is None else 1):
        emb, labels = K.batch(step)
        q = emb.clone().requires_grad_(True)
        if case["head"] == "ova":
            loss = dense_ova(q, W, b, labels, p)
        else:
            if p.get("label_repr", "free").startswith("features"):
                E = tower(head.label_feats)
            else:
                E = tower(head.label_values, head.label_offsets) if tower else 0
            E = E + W if W is not None else E
            loss = dense_dual(q, E, labels, p.get("scale", 20.0), p.get("normalize", True), active)
        opt.zero_grad()
        loss.backward()
        out[f"loss{step}"] = loss.detach()
        if step == 0:
            out["emb_grad"] = q.grad.clone()
            out["w_grad"] = W.grad.clone() if W is not None else None
            out["b_grad"] = b.grad.clone() if b is not None else None
            out["tower_grad"] = {n: t.grad.clone() for n, t in tower.named_parameters()} if tower else {}
        opt.step()
        if step == 0:
            out["w1"] = W.detach().clone() if W is not None else None
            out["tower1"] = {n: t.detach().clone() for n, t in tower.named_parameters()} if tower else {}
            out["b1"] = b.detach().clone() if b is not None else None
    return out


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["ws1_nogroup", "ws2", "ws3"])
def ranked(request):
    return request.param, run_on_world(K.run_all, request.param)


@pytest.mark.dist
@pytest.mark.parametrize("case", K.CASES, ids=[c["id"] for c in K.CASES])
def test_xmc_head_equals_dense(ranked, case):
    ws, results = ranked
    res = [r[case["id"]] for r in results]
    shortlist = case["params"].get("shortlist_k", 0) > 0
    active = sorted(set(torch.cat([r["last_active"] for r in res]).tolist())) if shortlist else None
    ref = dense_reference(case, active)
    single = K.run_case(case, ParallelContext.single())
    close(cat_ranks(res, "w0"), single["w0"], 1e-6)  # init by global label id: same head at any world size
    for r in res:
        assert torch.equal(r["loss0"], res[0]["loss0"]), "loss must be replicated"
    close(res[0]["loss0"], ref["loss0"])
    if not shortlist:
        close(res[0]["loss1"], ref["loss1"])
    close(cat_ranks(res, "emb_grad") / ws, ref["emb_grad"])  # head sends W * d loss / d emb_local
    if ref["w_grad"] is not None:
        if shortlist:  # only the active rows have a gradient; every other row's is exactly 0
            rows = torch.cat([r["active_rows"] for r in res])
            close(cat_ranks(res, "w_grad"), ref["w_grad"][rows])
            rest = torch.ones(K.C, dtype=torch.bool)
            rest[rows] = False
            assert torch.all(ref["w_grad"][rest] == 0)
        else:
            close(cat_ranks(res, "w_grad"), ref["w_grad"])
        close(cat_ranks(res, "w1"), ref["w1"])
    for r in res:
        if ref["b_grad"] is not None:
            close(r["b_grad"], ref["b_grad"])
            close(r["b1"], ref["b1"])
        for n, g in ref["tower_grad"].items():  # replicated tower: summed partials == dense gradient
            close(r["tower_grad"][n], g)
            close(r["tower1"][n], ref["tower1"][n])
    assert set(ref["tower_grad"]) == set(res[0]["tower_grad"])


def test_every_registered_xmc_head_is_covered():
    from xclass.heads.base import HEADS

    xmc = {n for n in HEADS.names() if HEADS.get(n).__module__ == "xclass.heads.xmc.heads"}
    assert xmc == {c["head"] for c in K.CASES}
