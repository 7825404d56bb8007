"""Checkpoints saved on 3 ranks load on 2 (and 1): identical class vectors and optimizer
state, and training continues exactly as it would have on 3 ranks."""
import os
import shutil

import numpy as np
import pytest
import torch

from tests.distutil import run_on_ranks
from tests.train.common import features_config, losses, write_features_data
from xclass.config import RunConfig
from xclass.parallel import ParallelContext
from xclass.train import checkpoint as ckpt
from xclass.train.loop import train
from xclass.train.reshard import merge_tree
from xclass.train.report import get_logger
from xclass.train.setup import build_setup, restore

pytestmark = pytest.mark.dist


def _train(ctx, cfg_dict):
    cfg = RunConfig.from_dict(cfg_dict)
    train(cfg, ctx)
    return losses(cfg.train.out_dir) if ctx.is_main else None


def _restored_rows(ctx, cfg_dict):
    cfg = RunConfig.from_dict(cfg_dict)
    s = build_setup(cfg, ctx)
    step, _, _ = restore(s, cfg, ctx, get_logger(ctx))
    w, start = s.head.local_weight()
    mom = s.head_opt.state_dict()["state"]["weight"]["momentum"]
    return step, start, w.clone(), mom.clone()


def _saved_rows(path, n):
    states = [ckpt.load_head_state(path, r) for r in range(n)]
    w = torch.cat([s["head"]["weight"] for s in states])
    mom = torch.cat([s["optimizer"]["state"]["weight"]["momentum"] for s in states])
    return w, mom


def test_save_on_3_load_on_2_and_1_then_train_identically(tmp_path):
    data = write_features_data(str(tmp_path / "d"), num_classes=25)  # 25 = uneven on 2 and 3
    three = str(tmp_path / "three")
    cfg3 = features_config(data, three, "train.max_steps=8", "train.checkpoint_every=4", "train.keep_last=3")
    full = run_on_ranks(_train, 3, cfg3.to_dict())[0]
    step4 = os.path.join(three, "checkpoints", "step_00000004")
    w_saved, m_saved = _saved_rows(step4, 3)
    for ws in (2, 1):
        run = str(tmp_path / f"as{ws}")
        os.makedirs(os.path.join(run, "checkpoints"))
        shutil.copytree(step4, os.path.join(run, "checkpoints", "step_00000004"))
        cfg = features_config(data, run, "train.max_steps=8", "train.checkpoint_every=4")
        got = run_on_ranks(_restored_rows, ws, cfg.to_dict()) if ws > 1 else \
            [_restored_rows(ParallelContext.single(), cfg.to_dict())]
        assert all(g[0] == 4 for g in got)
        assert [g[1] for g in got] == ([0, 13] if ws == 2 else [0])
        assert torch.equal(torch.cat([g[2] for g in got]), w_saved)
        assert torch.equal(torch.cat([g[3] for g in got]), m_saved)
        if ws == 2:  # continue on 2 ranks: same losses as the 3-rank run's steps 5..8
            cont = run_on_ranks(_train, 2, cfg.to_dict())[0]
            np.testing.assert_allclose(cont, full[4:], rtol=2e-5, atol=2e-6)


def test_merge_tree_rows_and_replicated():
    pieces = [(0, 2, {"w": torch.arange(4.0).view(4, 1), "b": torch.tensor([7.0]), "n": 3}),
              (2, 5, {"w": torch.arange(4.0, 10.0).view(6, 1), "b": torch.tensor([7.0]), "n": 3})]
    target = {"w": torch.zeros(4, 1), "b": torch.zeros(1), "n": 0}  # classes [1, 3), 2 rows each
    out = merge_tree(pieces, 1, 3, target)
    assert out["w"].view(-1).tolist() == [2.0, 3.0, 4.0, 5.0]
    assert out["b"].tolist() == [7.0] and out["n"] == 3


def _heads(margin, ws, num_classes=11, d=4):
    from types import SimpleNamespace

    from xclass.heads.margin_head import margin_head

    cfg = SimpleNamespace(margin=margin, margin_params={}, sample_rate=1.0, label_smoothing=0.0, params={})
    ocfg = SimpleNamespace(name="adamw", lr=0.1, momentum=0.0, weight_decay=0.01, head_lr=None)
    out = []
    for r in range(ws):
        h = margin_head(cfg, num_classes=num_classes, embedding_dim=d, ctx=ParallelContext(r, ws, None), seed=0)
        out.append((h, h.make_optimizer(ocfg)))
    return out


@pytest.mark.parametrize("margin", ["subcenter_arcface", "sphereface2"])
def test_reshard_rows_of_subcenters_bias_and_adamw_state(margin):
    """K rows per class, a replicated bias and per-row AdamW state survive 2 -> 3 ranks."""
    torch.manual_seed(0)
    old = _heads(margin, 2)
    for h, opt in old:  # one AdamW step with random gradients gives non-trivial state
        h.weight.grad = torch.randn_like(h.weight)
        if h.bias is not None:
            h.bias.grad = torch.ones_like(h.bias)
        opt.step()
    pieces = [(h.start, h.stop, {"head": h.state_dict(), "optimizer": o.state_dict()}) for h, o in old]
    new = _heads(margin, 3)
    for h, o in new:
        sub = [p for p in pieces if p[0] < h.stop and p[1] > h.start]
        h.load_state_dict(merge_tree([(a, b, s["head"]) for a, b, s in sub], h.start, h.stop, h.state_dict()))
        o.load_state_dict(merge_tree([(a, b, s["optimizer"]) for a, b, s in sub], h.start, h.stop))
    cat = lambda hs, f: torch.cat([f(h, o) for h, o in hs])  # noqa: E731
    assert torch.equal(cat(new, lambda h, o: h.weight.detach()), cat(old, lambda h, o: h.weight.detach()))
    for key in ("exp_avg", "exp_avg_sq", "steps"):
        get = lambda h, o: o.state_dict()["state"]["weight"][key]  # noqa: E731
        assert torch.equal(cat(new, get), cat(old, get)), key
    if margin == "sphereface2":
        assert all(torch.equal(h.bias, old[0][0].bias) for h, _ in new)
