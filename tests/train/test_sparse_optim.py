"""optim.sparse_embeddings: SparseAdam on the encoder's embedding tables, the named optimizer on
the rest. Checked against a hand-written lazy Adam on dense autograd gradients (touched rows),
untouched rows bit-identical, dense Adam on a first step, the data-parallel average on 1-3 gloo
ranks equal to one process on the whole batch, config errors, and a checkpoint resume."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from tests.distutil import run_on_ranks
from xclass.config import load_config
from xclass.config_types import ConfigError
from xclass.models.encoders.text import EmbBagEncoder
from xclass.train.sparse_optim import embedding_tables, make_split_optimizer

V, D, B, L = 40, 6, 8, 5
LR, BETAS, EPS = 0.05, (0.9, 0.999), 1e-8


class Cfg:  # the optim config fields the builder reads
    name, lr, weight_decay, betas, momentum, sparse_embeddings = "adamw", LR, 0.0, BETAS, 0.0, True


def encoder(seed: int = 0, mode: str = "mean") -> EmbBagEncoder:
    torch.manual_seed(seed)
    return EmbBagEncoder(V, 4, D, (), mode, L, 0.0)


def batch(step: int, lo: int = 0, hi: int = V // 2) -> dict:
    """Tokens drawn from [lo, hi) (so rows >= hi are never touched), random lengths and weights."""
    g = torch.Generator().manual_seed(100 + step)
    return {"tokens": torch.randint(lo, hi, (B, L), generator=g),
            "lengths": torch.randint(1, L + 1, (B,), generator=g),
            "token_weights": torch.rand(B, L, generator=g) + 0.1}


def loss_of(enc: EmbBagEncoder, inputs: dict) -> torch.Tensor:
    target = torch.linspace(-1, 1, B * 4).view(B, 4)
    return ((enc(inputs) - target) ** 2).sum()


def touched(inputs: dict) -> torch.Tensor:
    mask = torch.arange(L).unsqueeze(0) < inputs["lengths"].unsqueeze(1)
    return torch.unique(inputs["tokens"][mask])


def lazy_adam_reference(enc: EmbBagEncoder, steps: int) -> EmbBagEncoder:
    """Dense autograd gradients; Adam moments and values updated on the touched rows only,
    bias correction by the table's step count (eps added to sqrt(v) before the correction);
    the MLP by torch AdamW."""
    ref = copy.deepcopy(enc)
    table = ref.bag.weight
    m, v = torch.zeros_like(table), torch.zeros_like(table)
    mlp_opt = torch.optim.AdamW(ref.mlp.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
    for t in range(1, steps + 1):
        inputs = batch(t)
        ref.zero_grad()
        loss_of(ref, inputs).backward()
        rows, g = touched(inputs), table.grad.detach()
        with torch.no_grad():
            m[rows] = BETAS[0] * m[rows] + (1 - BETAS[0]) * g[rows]
            v[rows] = BETAS[1] * v[rows] + (1 - BETAS[1]) * g[rows] ** 2
            # torch's Adam algebra with eps outside the bias correction (SparseAdam's form)
            step = LR * (1 - BETAS[1] ** t) ** 0.5 / (1 - BETAS[0] ** t)
            table[rows] -= step * m[rows] / (v[rows].sqrt() + EPS)
        mlp_opt.step()
    return ref


def run_sparse(enc: EmbBagEncoder, steps: int) -> EmbBagEncoder:
    enc = copy.deepcopy(enc)
    opt = make_split_optimizer(enc, Cfg)
    for t in range(1, steps + 1):
        opt.zero_grad()
        loss_of(enc, batch(t)).backward()
        assert enc.bag.weight.grad.is_sparse
        opt.step()
    return enc


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_matches_lazy_adam_reference_and_leaves_untouched_rows(mode):
    enc = encoder(mode=mode)
    got, ref = run_sparse(enc, 3), lazy_adam_reference(enc, 3)
    assert embedding_tables(got) == [got.bag] and got.bag.sparse
    torch.testing.assert_close(got.bag.weight, ref.bag.weight, rtol=1e-5, atol=1e-6)
    for a, b in zip(got.mlp.parameters(), ref.mlp.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    never = torch.arange(V // 2, V + 1)  # incl. the padding row
    assert torch.equal(got.bag.weight[never], enc.bag.weight[never])
    assert not torch.equal(got.bag.weight[: V // 2], enc.bag.weight[: V // 2])


def test_rows_not_in_a_step_are_not_moved_by_it():
    """Lazy: a row touched at step 1 but not step 2 keeps its value through step 2 (dense Adam's
    momentum would move it)."""
    enc = encoder()
    opt = make_split_optimizer(enc, Cfg)
    for t, (lo, hi) in enumerate([(0, 10), (10, 20)], 1):
        opt.zero_grad()
        loss_of(enc, batch(t, lo, hi)).backward()
        before = enc.bag.weight.detach().clone()
        opt.step()
    assert torch.equal(enc.bag.weight[:10], before[:10])
    assert not torch.equal(enc.bag.weight[10:20], before[10:20])


def test_first_step_equals_dense_adam_on_touched_rows():
    enc = encoder()
    dense = copy.deepcopy(enc)
    opt = torch.optim.Adam(dense.parameters(), lr=LR, betas=BETAS)
    loss_of(dense, batch(1)).backward()
    opt.step()
    got = run_sparse(enc, 1)
    rows = touched(batch(1))
    # equal up to where eps enters the bias correction (1e-8 vs 1e-8 / sqrt(1 - beta2))
    torch.testing.assert_close(got.bag.weight[rows], dense.bag.weight[rows], rtol=1e-4, atol=1e-5)


def _dp_step(ctx, seed):
    """One data-parallel step: rank r encodes its slice of the global batch (mean loss over the
    global batch), averaged gradients, one sparse step -> (dense copy of the averaged table
    gradient, the table)."""
    from xclass.train.engine import PlainEngine

    enc = encoder(seed, mode="sum")
    eng = PlainEngine(enc, Cfg, ctx)
    inputs = batch(7, 0, V)
    rows = torch.arange(B)[ctx.rank::ctx.world_size]
    part = {k: v[rows] for k, v in inputs.items()}
    target = torch.linspace(-1, 1, B * 4).view(B, 4)[rows]
    eng.backward(((eng(part) - target) ** 2).sum() * ctx.world_size / B)
    eng.grads_ready()
    g = enc.bag.weight.grad
    assert g.is_sparse
    eng.step()
    return g.to_dense(), enc.bag.weight.detach().clone()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_data_parallel_sparse_average_equals_one_process(world):
    enc = encoder(3, mode="sum")
    opt = make_split_optimizer(enc, Cfg)
    target = torch.linspace(-1, 1, B * 4).view(B, 4)
    (((enc(batch(7, 0, V)) - target) ** 2).sum() / B).backward()
    grad = enc.bag.weight.grad.to_dense()
    opt.step()
    for g, w in run_on_ranks(_dp_step, world, 3):
        torch.testing.assert_close(g, grad, rtol=1e-5, atol=1e-7)
        # Adam's first step is about lr * sign(g): float noise in a tiny g moves it slightly
        torch.testing.assert_close(w, enc.bag.weight.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("extra,msg", [
    (["optim.name=sgd"], "needs optim.name adam or adamw"),
    (["optim.name=adamw", "deepspeed.enabled=true"], "not supported with deepspeed.enabled"),
    (["optim.name=adamw", "optim.sparse_embeddings=maybe"], "optim.sparse_embeddings"),
])
def test_config_errors_name_the_key(extra, msg):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.sparse_embeddings=true", *extra])
    assert "optim.sparse_embeddings" in str(e.value) and msg in str(e.value), str(e.value)


def test_training_resumes_from_a_checkpoint(tmp_path):
    """6 steps in one go == 3 steps, checkpoint, resume to 6 (SparseAdam + AdamW states saved)."""
    import xclass.heads.xmc  # noqa: F401  (registers the heads)
    from xclass.data.generate import make_data
    from xclass.train.checkpoint import latest_checkpoint
    from xclass.train.loop import train
    from xclass.train.safe_io import safe_load

    d = str(tmp_path / "data")
    make_data("xmc", d, 30, rows_per_class=4, seed=0, progress=False)

    def run(out: str, steps: int) -> None:
        train(load_config(None, [
            "data.task=xmc", f"data.path={d}", "data.batch_size=16", "model.encoder=embbag",
            "model.embedding_dim=8", "model.params={token_dim: 8, hidden: [8]}", "head.name=dual_decoupled",
            "head.params={scale: 10.0}", "optim.name=adamw", "optim.lr=0.05", "optim.weight_decay=0.0",
            "optim.sparse_embeddings=true", "optim.schedule=constant", f"train.max_steps={steps}",
            "train.checkpoint_every=3", "train.log_every=1", f"train.out_dir={out}", "train.progress=false"]))

    run(str(tmp_path / "a"), 6)
    run(str(tmp_path / "b"), 3)
    run(str(tmp_path / "b"), 6)
    a, b = (safe_load(os.path.join(latest_checkpoint(str(tmp_path / r)), "encoder.pt")) for r in "ab")
    assert set(a["optimizer"]) == {"sparse", "dense"}
    for k, va in a["module"].items():
        torch.testing.assert_close(b["module"][k], va, msg=k)
    assert not torch.equal(a["module"]["bag.weight"], b["module"]["bag.weight"] * 0)
