"""head.params.update_in_backward in the training loop: the loop sets the head's learning rate
before the backward (the step happens there), so a run with a warm-up and a cosine schedule
reproduces the normal run's losses, gradient norms, final head rows and optimizer state on 1 and
2 ranks (SGD momentum; AdamW on 2); a run setting that would make it inexact (grad_accum > 1,
grad_clip > 0) is refused at set-up naming the key."""
import os

import pytest
import torch

from tests.distutil import run_on_world
from tests.train.common import features_config, write_features_data
from xclass.config import RunConfig
from xclass.config_types import ConfigError
from xclass.train.report import read_metrics

pytestmark = pytest.mark.slow

FUSED = ["head.params={impl: fused, chunk: 5}", "optim.warmup_steps=2", "train.checkpoint_every=0"]
UPDATE = ["head.params={impl: fused, chunk: 5, update_in_backward: true}", "optim.warmup_steps=2",
          "train.checkpoint_every=0"]


def _train(ctx, cfg_dict):
    """(metrics rows (loss, grad_norm), the final checkpoint's head rows and momentum) of a run."""
    from xclass.train import checkpoint as ckpt
    from xclass.train.loop import train

    cfg = RunConfig.from_dict(cfg_dict)
    train(cfg, ctx)
    hs = ckpt.load_head_state(ckpt.find_resume(cfg.train.out_dir, ctx), ctx.rank, map_location="cpu")
    rows = [(r["loss"], r["grad_norm"]) for r in read_metrics(cfg.train.out_dir) if "loss" in r]
    return rows, hs["head"]["weight"], hs["optimizer"]["state"]["weight"]


@pytest.mark.parametrize("ws,optim", [(1, "sgd"), (2, "sgd"), (2, "adamw")])
def test_loop_with_update_in_backward_equals_the_normal_run(tmp_path, ws, optim):
    data = write_features_data(str(tmp_path / "data"))
    got = {}
    for name, extra in (("normal", FUSED), ("update", UPDATE)):
        cfg = features_config(data, str(tmp_path / f"{name}{ws}"), *extra, f"optim.name={optim}",
                              *(["optim.lr=0.01"] if optim == "adamw" else []))
        got[name] = run_on_world(_train, ws, cfg.to_dict())
    for (rows_n, w_n, m_n), (rows_u, w_u, m_u) in zip(got["normal"], got["update"]):
        assert len(rows_n) == len(rows_u) == 6
        for (ln, gn), (lu, gu) in zip(rows_n, rows_u):
            assert abs(ln - lu) <= 1e-5 * max(1.0, abs(ln)), (ln, lu)
            assert abs(gn - gu) <= 1e-4 * max(1.0, abs(gn)), (gn, gu)
        torch.testing.assert_close(w_u, w_n, rtol=1e-5, atol=1e-6)
        assert sorted(m_u) == sorted(m_n)
        for key in m_n:  # momentum, or AdamW's moments and per-row step counts
            torch.testing.assert_close(m_u[key], m_n[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra,key", [(["train.grad_accum=2"], "train.grad_accum"),
                                       (["optim.grad_clip=1.0"], "optim.grad_clip")])
def test_inexact_run_settings_are_refused(tmp_path, extra, key):
    from xclass.parallel import ParallelContext
    from xclass.train.setup import build_setup

    data = write_features_data(str(tmp_path / "data"))
    cfg = features_config(data, str(tmp_path / "run"), *UPDATE, *extra)
    with pytest.raises(ConfigError, match=f"head.params.update_in_backward.*{key}"):
        build_setup(cfg, ParallelContext.single())
    assert not os.path.exists(os.path.join(str(tmp_path / "run"), "checkpoints"))
