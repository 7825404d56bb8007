"""DeepSpeed engine for the encoder: ZeRO-1 and ZeRO-2 on 2 ranks reach the loss of stage 0
(and of the plain engine); the head stays outside the engine."""
import os

import numpy as np
import pytest

from tests.distutil import run_on_ranks
from tests.train.common import features_config, losses, write_features_data
from xclass.config import RunConfig

pytestmark = [pytest.mark.dist, pytest.mark.slow]

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")


def _train(ctx, cfg_dict):
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from xclass.train.loop import train

    cfg = RunConfig.from_dict(cfg_dict)
    train(cfg, ctx)
    return losses(cfg.train.out_dir) if ctx.is_main else None


def test_zero_stages_match(tmp_path):
    data = write_features_data(str(tmp_path / "d"))
    common = ("train.max_steps=8", "optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.0")
    plain = run_on_ranks(_train, 2, features_config(data, str(tmp_path / "plain"), *common).to_dict())[0]
    got = {}
    for stage in (0, 1, 2):
        cfg = features_config(data, str(tmp_path / f"z{stage}"), *common, "deepspeed.enabled=true",
                              f"deepspeed.zero_stage={stage}")
        got[stage] = run_on_ranks(_train, 2, cfg.to_dict())[0]
    np.testing.assert_allclose(got[0], plain, rtol=1e-5, atol=1e-6)
    for stage in (1, 2):
        np.testing.assert_allclose(got[stage], got[0], rtol=1e-4, atol=1e-5)
    # bf16 encoder (ZeRO-2 JSON from configs/): same trajectory within bf16 precision
    cfg = features_config(data, str(tmp_path / "bf16"), *common, "deepspeed.enabled=true",
                          f"deepspeed.config={CONFIGS}/deepspeed/zero2_bf16.json")
    bf16 = run_on_ranks(_train, 2, cfg.to_dict())[0]
    np.testing.assert_allclose(bf16, got[0], rtol=3e-2, atol=3e-2)
    assert not np.allclose(bf16, got[0], rtol=1e-6, atol=0)  # it really ran in bf16
