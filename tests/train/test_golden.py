"""Golden losses: configs/debug/tiny_cpu.yaml on 2 gloo ranks must reproduce
tests/assets/tiny_cpu_losses.txt (``step loss`` per line). A refactor that should not change the
numbers must pass this unchanged; a change that means to alter them regenerates the file with
``XCLASS_REGEN_GOLDEN=1 pytest tests/train/test_golden.py`` and says why in its commit."""
import os

import numpy as np
import pytest

from tests.distutil import run_on_ranks
from xclass.config import RunConfig, load_config
from xclass.train.report import read_metrics

pytestmark = [pytest.mark.dist, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "assets", "tiny_cpu_losses.txt")


def _train(ctx, cfg_dict):
    from xclass.train.loop import train

    cfg = RunConfig.from_dict(cfg_dict)
    train(cfg, ctx)
    return [(r["step"], r["loss"]) for r in read_metrics(cfg.train.out_dir)] if ctx.is_main else None


def test_tiny_cpu_golden_losses(tmp_path):
    from xclass.data import make_data

    data = str(tmp_path / "tiny_face")
    make_data("face", data, 100, rows_per_class=20, seed=0, progress=False, image_size=16)
    cfg = load_config(os.path.join(ROOT, "configs", "debug", "tiny_cpu.yaml"),
                      [f"data.path={data}", f"train.out_dir={tmp_path / 'run'}", "train.log_every=1",
                       "train.progress=false"])
    got = run_on_ranks(_train, 2, cfg.to_dict())[0]
    if os.environ.get("XCLASS_REGEN_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.writelines(f"{s} {l:.8f}\n" for s, l in got)
    want = np.loadtxt(GOLDEN)
    assert [s for s, _ in got] == want[:, 0].astype(int).tolist()
    np.testing.assert_allclose([l for _, l in got], want[:, 1], rtol=1e-4, atol=1e-5)
