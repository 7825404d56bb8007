"""Every registered head and margin: CUDA equals CPU (loss and dL/demb of every step, the head's
weights and optimizer-visible state after two optimizer steps). Tolerances: tests/gpu/common.py."""
from __future__ import annotations

import types

import pytest
import torch

from tests.gpu.common import REL32, REL64, assert_same_run, run_head, test_device
from tests.heads import cases as margin_cases
from tests.xmc import cases as xmc_cases
from tests.zloss import helpers as zl
from xclass import components
from xclass.heads.base import HEADS

components.load_all()

SGD = types.SimpleNamespace(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, head_lr=None)


@pytest.fixture(scope="module")
def device():
    return test_device()


def _compare(make, batches, optim, device, tol=REL32):
    ref = run_head(make, batches, optim, torch.device("cpu"))
    got = run_head(make, batches, optim, device)
    assert_same_run(got, ref, tol)


def _margin_make(case, rate=1.0):
    def make(ctx):
        return HEADS.get("margin")(margin_cases.head_cfg(case, rate), num_classes=margin_cases.C,
                                   embedding_dim=margin_cases.D, ctx=ctx, seed=margin_cases.SEED)
    return make


MARGIN_CASES = margin_cases.CASES + margin_cases.PFC_CASES


@pytest.mark.parametrize("case", MARGIN_CASES, ids=[c["id"] for c in MARGIN_CASES])
def test_margin_head_cuda_equals_cpu(device, case):
    """Every registered margin (and the extra variants, Partial FC included) on the sharded head."""
    optim = margin_cases.ADAMW if case.get("optim") == "adamw" else margin_cases.SGD
    batches = [margin_cases.batch(7, s) for s in range(2)]
    _compare(_margin_make(case, case.get("rate", 1.0)), batches, optim, device)


def test_softmax_dense_cuda_equals_cpu(device):
    def make(ctx):
        return HEADS.get("softmax_dense")(margin_cases.head_cfg(dict(margin="softmax", params={})),
                                          num_classes=margin_cases.C, embedding_dim=margin_cases.D,
                                          ctx=ctx, seed=margin_cases.SEED)
    _compare(make, [margin_cases.batch(3, s) for s in range(2)], margin_cases.SGD, device)


ZLOSS = [("zloss", {}), ("zloss_efficient", {}), ("zloss", {"dtype": "float32"}),
         ("zloss_efficient", {"dtype": "float32"})]


@pytest.mark.parametrize("name,params", ZLOSS, ids=[f"{n}-{p.get('dtype', 'float64')}" for n, p in ZLOSS])
def test_zloss_head_cuda_equals_cpu(device, name, params):
    batches = zl.task_batches(3, K=1, seed=4)
    if params.get("dtype") == "float32":
        batches = [(h.float(), y) for h, y in batches]
    tol = REL32 if params.get("dtype") == "float32" else REL64
    _compare(lambda ctx: zl.build(name, ctx, **params), batches, zl.optim_cfg(lr=0.5), device, tol)


@pytest.mark.parametrize("case", xmc_cases.CASES, ids=[c["id"] for c in xmc_cases.CASES])
def test_xmc_head_cuda_equals_cpu(device, case):
    batches = [xmc_cases.batch(s) for s in range(2)]
    _compare(lambda ctx: xmc_cases.build(case, ctx), batches, case["optim"], device)


def _ap_cfg(name):
    params = {"angproto": {"init_w": 7.0, "init_b": -2.0},
              "margin_angproto": {"init_w": 7.0, "init_b": -2.0, "ap_weight": 0.5}}[name]
    return types.SimpleNamespace(name=name, margin="aam", margin_params={"m": 0.2, "s": 30.0},
                                 sample_rate=1.0, label_smoothing=0.0, params=params)


def _ap_batches():
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([3, 1, 9, 3, 7, 1, 1, -100, 7, 4, 3, 7])
    return [(torch.randn(12, 5, generator=g), labels) for _ in range(2)]


@pytest.mark.parametrize("name", ["angproto", "margin_angproto"])
def test_prototypical_head_cuda_equals_cpu(device, name):
    def make(ctx):
        return HEADS.get(name)(_ap_cfg(name), num_classes=10, embedding_dim=5, ctx=ctx, seed=0)
    _compare(make, _ap_batches(), SGD, device)


def test_every_registered_head_and_margin_is_covered():
    from xclass.losses import MARGINS

    covered = {"margin", "softmax_dense", "angproto", "margin_angproto"} | {n for n, _ in ZLOSS} \
        | {c["head"] for c in xmc_cases.CASES}
    assert set(HEADS.names()) <= covered, set(HEADS.names()) - covered
    assert set(MARGINS.names()) <= {c["margin"] for c in MARGIN_CASES}
