"""A 2-node Ray cluster simulated on this machine (two raylets on 127.0.0.2 / 127.0.0.3 with
their own ports and temp dirs, via launch/simulate_two_nodes.sh): `xclass train --address`
runs one worker per node and reaches the single-process losses."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train.common import features_config, losses, write_features_data
from xclass.config import save_config
from xclass.parallel import ParallelContext
from xclass.train.loop import train

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _env():
    import secrets

    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0", DS_ACCELERATOR="cpu",
               RAY=os.path.join(BIN, "ray"), PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    return env


def test_two_node_cluster(tmp_path):
    script = os.path.join(ROOT, "launch", "simulate_two_nodes.sh")
    import tempfile

    env = dict(_env(), TMP2=tempfile.mkdtemp(prefix="xr2-", dir="/tmp"))  # short: AF_UNIX paths <= 107 bytes
    up = subprocess.run(["bash", script, "up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        data = write_features_data(str(tmp_path / "d"))
        one = str(tmp_path / "one")
        train(features_config(data, one), ParallelContext.single())
        cfg = features_config(data, str(tmp_path / "cluster"))
        cfg_path = str(tmp_path / "cfg.yaml")
        save_config(cfg, cfg_path)
        run = subprocess.run(
            [os.path.join(BIN, "xclass"), "train", "--config", cfg_path, "--workers", "2",
             "--address", "127.0.0.2:6390"], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        np.testing.assert_allclose(losses(str(tmp_path / "cluster")), losses(one), rtol=2e-5, atol=2e-6)
        hosts = {open(os.path.join(tmp_path, "cluster", "workers", f"rank{r}.json")).read() for r in (0, 1)}
        assert len(hosts) == 2
    finally:
        subprocess.run(["bash", script, "down"], env=env, capture_output=True, timeout=120)
