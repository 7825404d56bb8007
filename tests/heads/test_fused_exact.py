"""The fused head (head.params.impl = fused: class chunks, online log-sum-exp, no [B_g, C_local]
buffer) equals the materialised head and the dense reference on 1 (no process group), 2 and 3 gloo
ranks: loss, d loss / d emb, d loss / d W shard, two optimizer steps (SGD momentum and AdamW) and
the optimizer state, for every softmax margin in MARGINS, with chunks that do not divide the
shard, one class per rank, empty sampled shards, all rows ignored, logit gaps of 200, gradient
accumulation over micro-batches and Partial FC."""
import types

import pytest
import torch

from tests.distutil import cat_ranks, run_on_world
from tests.heads import cases as K
from xclass.heads import fused
from xclass.heads.base import HEADS
from xclass.losses import MARGINS
from xclass.parallel import ParallelContext

SOFTMAX = [n for n in MARGINS.names() if fused.supports(MARGINS.build(n))]
OTHER = [n for n in MARGINS.names() if n not in SOFTMAX]
CHUNK = 4  # classes per chunk: does not divide the shards (11 -> 4 + 4 + 3; 6/5; 4/4/3)

CASES = [dict(id=n, margin=n, params={}) for n in SOFTMAX] + [
    dict(id="arcface_st_ls", margin="arcface", params={"grad": "straight_through"}, ls=0.1),
    dict(id="subcenter_ls_adamw", margin="subcenter_arcface", params={"k": 2}, ls=0.1, optim="adamw"),
    dict(id="cosface_adamw", margin="cosface", params={}, optim="adamw"),
    dict(id="aam_warmup", margin="aam", params={"m_start": 0.0, "warmup_start": 0, "warmup_end": 4}),
    dict(id="auto_chunk", margin="arcface", params={}, chunk=0),
    dict(id="one_class_per_rank", margin="arcface", params={}, C=3, chunk=1),
    dict(id="all_ignored", margin="cosface", params={}, ignore_all=True),
    dict(id="gap200", margin="softmax", params={"s": 1.0}, scale=1e4),
    dict(id="accum_arcface", margin="arcface", params={}, micro=2),
    dict(id="accum_subcenter_adamw", margin="subcenter_arcface", params={"k": 3}, micro=2, optim="adamw"),
]
PFC = [dict(id="pfc_arcface", margin="arcface", params={}, rate=0.5),
       dict(id="pfc_subcenter_ls", margin="subcenter_arcface", params={"k": 2}, rate=0.5, ls=0.1),
       dict(id="pfc_elastic_plus_accum", margin="elastic_arc_plus", params={}, rate=0.5, micro=2),
       dict(id="pfc_empty_shard", margin="cosface", params={}, rate=0.05, low_labels=True),
       dict(id="pfc_adamw", margin="arcface", params={}, rate=0.5, optim="adamw")]
ALL = CASES + PFC


def _cfg(case, impl):
    params = {} if impl is None else {"impl": impl, "chunk": case.get("chunk", CHUNK)}
    return types.SimpleNamespace(name="margin", margin=case["margin"], margin_params=case["params"],
                                 sample_rate=case.get("rate", 1.0), label_smoothing=case.get("ls", 0.0),
                                 params=params)


def _batch(i, step, micro, case):
    """Global micro-batch (emb [B, D], labels [B]) with ignored rows and labels on every shard."""
    c = case.get("C", K.C)
    g = torch.Generator().manual_seed(1000 * i + 10 * step + micro)
    emb = torch.randn(K.B, K.D, generator=g) * case.get("scale", 1.0)
    labels = torch.randint(0, 3 if case.get("low_labels") else c, (K.B,), generator=g)
    labels[[2, 6]] = -100
    if not case.get("low_labels"):
        labels[0], labels[1] = 0, c - 1
    if case.get("ignore_all"):
        labels[:] = -100
    return emb, labels


def _grad(head):
    if getattr(head, "active", None) is None:
        return head.weight.grad.clone()
    rows, leaf = head.active
    return torch.zeros_like(head.weight).index_copy_(0, rows, leaf.grad)


def _steps(head, opt, i, case, ws, rank):
    """Two optimizer steps of ``case.micro`` micro-batches each; records losses, grads, weights."""
    out = {"start": getattr(head, "start", 0), "w0": head.weight.detach().clone()}
    for step in range(2):
        for j in range(case.get("micro", 1)):
            emb, labels = _batch(i, step, j, case)
            e = K.local(emb, ws, rank).clone().requires_grad_(True) if ws else emb.clone().requires_grad_(True)
            res = head(e, K.local(labels, ws, rank) if ws else labels)
            res.loss.backward()
            out[f"loss{step}_{j}"] = res.loss.detach()
            out[f"emb_grad{step}_{j}"] = e.grad.clone()
        if step == 0:
            out["w_grad"] = _grad(head)
            out["rows0"] = None if getattr(head, "active", None) is None else head.active[0].clone()
        opt.step()
        opt.zero_grad()
        out[f"w{step + 1}"] = head.weight.detach().clone()
    st = getattr(opt, "state", {})
    out["state"] = {k: v.clone() for k, v in st.get("weight", {}).items()} if isinstance(st, dict) else {}
    return out


def _optim(case):
    return K.ADAMW if case.get("optim") == "adamw" else K.SGD


def run_cases(ctx):
    """Every case, materialised and fused, on this rank (one spawn per world size)."""
    torch.manual_seed(0)
    res = {}
    for i, case in enumerate(ALL):
        for impl in ("materialized", "fused"):
            head = HEADS.get("margin")(_cfg(case, impl), num_classes=case.get("C", K.C), embedding_dim=K.D,
                                       ctx=ctx, seed=K.SEED)
            res[case["id"], impl] = _steps(head, head.make_optimizer(_optim(case)), i, case,
                                           ctx.world_size, ctx.rank)
    return res


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["ws1_nogroup", "ws2", "ws3"])
def ranked(request):
    return request.param, run_on_world(run_cases, request.param)


def close(a, b, tol=1e-5):
    """max |a - b| <= tol * max(1, max |b|) (fp32, relative to the tensor's scale)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel() == 0:
        return
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"max err {err:.3g} > {tol:g} * {scale:.3g}"


def _keys(case):
    micro = [f"{k}{s}_{j}" for s in range(2) for j in range(case.get("micro", 1)) for k in ("loss", "emb_grad")]
    return micro + ["w_grad", "w1", "w2"]


@pytest.mark.dist
@pytest.mark.parametrize("case", ALL, ids=[c["id"] for c in ALL])
def test_fused_equals_materialized(ranked, case):
    ws, results = ranked
    if all((case["id"], "materialized") in r for r in results):
        mat = [r[case["id"], "materialized"] for r in results]
        fus = [r[case["id"], "fused"] for r in results]
        for key in _keys(case):  # batch- or class-sharded: compared whole, on the global scale
            if key.startswith("loss"):  # replicated
                assert all(torch.equal(f[key], fus[0][key]) for f in fus)
                close(fus[0][key], mat[0][key])
            else:
                close(cat_ranks(fus, key), cat_ranks(mat, key))
        for f, m in zip(fus, mat):
            assert sorted(f["state"]) == sorted(m["state"])
            for key, v in m["state"].items():
                if v.is_floating_point():
                    close(f["state"][key], v)
                else:
                    assert torch.equal(f["state"][key], v)
            if case.get("rate", 1.0) < 1.0:  # the same Partial-FC sample; unsampled rows bitwise unchanged
                assert torch.equal(f["rows0"], m["rows0"])
                out = torch.ones(f["w0"].shape[0], dtype=torch.bool)
                out[f["rows0"]] = False
                assert torch.equal(f["w1"][out], f["w0"][out])
    if case.get("ignore_all"):
        assert all(float(r[case["id"], "fused"]["loss0_0"]) == 0.0 for r in results)
        assert float(cat_ranks([r[case["id"], "fused"] for r in results], "w_grad").abs().max()) == 0.0
    if case["id"] == "pfc_empty_shard" and ws == 3:
        assert min(r[case["id"], "fused"]["rows0"].numel() for r in results) == 0, "a shard must be empty"


@pytest.mark.dist
@pytest.mark.parametrize("case", [c for c in CASES if c.get("rate", 1.0) == 1.0],
                         ids=[c["id"] for c in CASES if c.get("rate", 1.0) == 1.0])
def test_fused_equals_dense(ranked, case):
    ws, results = ranked
    i = ALL.index(case)
    dense = HEADS.get("softmax_dense")(_cfg(case, None), num_classes=case.get("C", K.C), embedding_dim=K.D,
                                       ctx=ParallelContext.single(), seed=K.SEED)
    ref = _steps(dense, dense.make_optimizer(_optim(case)), i, case, 0, 0)
    res = [r[case["id"], "fused"] for r in results]
    for j in range(case.get("micro", 1)):
        for s in range(2):
            close(res[0][f"loss{s}_{j}"], ref[f"loss{s}_{j}"])
            close(cat_ranks(res, f"emb_grad{s}_{j}") / ws, ref[f"emb_grad{s}_{j}"])
    for key in ("w0", "w_grad", "w1", "w2"):
        close(cat_ranks(res, key), ref[key])


def _single(case, impl):
    head = HEADS.get("margin")(_cfg(case, impl), num_classes=case.get("C", K.C), embedding_dim=K.D,
                               ctx=ParallelContext.single(), seed=K.SEED)
    return _steps(head, head.make_optimizer(_optim(case)), ALL.index(case), case, 1, 0)


@pytest.mark.dist
@pytest.mark.parametrize("case", PFC, ids=[c["id"] for c in PFC])
def test_fused_partial_fc_equals_single_process(ranked, case):
    """Partial FC: the fused head on W ranks equals the materialised head in one process (the
    global sample does not depend on W); covers shards whose sample is empty."""
    ws, results = ranked
    ref = _single(case, "materialized")
    res = [r[case["id"], "fused"] for r in results]
    for s in range(2):
        for j in range(case.get("micro", 1)):
            close(res[0][f"loss{s}_{j}"], ref[f"loss{s}_{j}"])
            close(cat_ranks(res, f"emb_grad{s}_{j}") / ws, ref[f"emb_grad{s}_{j}"])
    for key in ("w0", "w_grad", "w1", "w2"):
        close(cat_ranks(res, key), ref[key])
    for key, v in ref["state"].items():
        got = torch.cat([r["state"][key] for r in res])
        close(got, v) if v.is_floating_point() else None


def test_gap200_case_has_large_logit_gaps():
    """Control for the gap200 case: its first batch's logits span more than 200 within a row."""
    case = next(c for c in CASES if c["id"] == "gap200")
    emb, _ = _batch(ALL.index(case), 0, 0, case)
    head = HEADS.get("margin")(_cfg(case, "fused"), num_classes=K.C, embedding_dim=K.D,
                               ctx=ParallelContext.single(), seed=K.SEED)
    z = emb @ head.weight.detach().t()
    assert float((z.amax(1) - z.amin(1)).max()) > 200


def test_unsupported_margins_fall_back_to_materialized():
    e, w = torch.zeros(4, 2), torch.zeros(5, 2)
    for name in OTHER:
        assert not fused.use_fused("fused", MARGINS.build(name), e, w)
    for name in SOFTMAX:
        assert fused.use_fused("fused", MARGINS.build(name), e, w)
        assert not fused.use_fused("materialized", MARGINS.build(name), e, w)


def test_auto_takes_fused_when_the_buffer_would_be_large(monkeypatch):
    arc = MARGINS.build("arcface")
    e, w = torch.zeros(256, 2), torch.zeros(1000, 2)
    assert not fused.use_fused("auto", arc, e, w)  # 1 MB of a machine's RAM: materialised
    monkeypatch.setattr(fused, "device_memory_bytes", lambda dev: 16 * 4 * 256 * 1000 - 1)
    assert fused.use_fused("auto", arc, e, w)
    assert not fused.use_fused("auto", MARGINS.build("sphereface2"), e, w)


@pytest.mark.parametrize("params,key", [({"impl": "fast"}, "head.params.impl"),
                                        ({"chunk": -1}, "head.params.chunk"),
                                        ({"chunk": 2.5}, "head.params.chunk")])
def test_bad_impl_params_name_the_key(params, key):
    cfg = types.SimpleNamespace(name="margin", margin="arcface", margin_params={}, sample_rate=1.0,
                                label_smoothing=0.0, params=params)
    with pytest.raises(ValueError, match=key):
        HEADS.get("margin")(cfg, num_classes=5, embedding_dim=4, ctx=ParallelContext.single(), seed=0)


def test_fused_under_autocast_takes_the_autocast_dtype_as_the_materialized_head():
    """Under CPU bf16 autocast both heads run their score GEMMs in bf16: same loss and gradients
    within bf16 rounding, and far from the fp32 result's exact equality (the cast really happens)."""
    res = {}
    for impl, amp in (("materialized", True), ("fused", True), ("fused", False)):
        cfg = types.SimpleNamespace(name="margin", margin="arcface", margin_params={}, sample_rate=1.0,
                                    label_smoothing=0.0, params={"impl": impl, "chunk": 7})
        head = HEADS.get("margin")(cfg, num_classes=40, embedding_dim=16, ctx=ParallelContext.single(), seed=1)
        g = torch.Generator().manual_seed(3)
        emb = torch.randn(12, 16, generator=g).requires_grad_(True)
        labels = torch.randint(0, 40, (12,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = head(emb, labels).loss
        loss.backward()
        res[impl, amp] = (loss.detach(), emb.grad, head.weight.grad)
    for a, b in zip(res["fused", True], res["materialized", True]):
        close(a, b, tol=2e-2)
    assert not torch.equal(res["fused", True][0], res["fused", False][0])
