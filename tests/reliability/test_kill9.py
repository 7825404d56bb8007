"""Kill -9 at random moments (some while a checkpoint is being written) and resume: every
resumed run continues from the newest complete checkpoint and reaches, step for step, the
losses of an uninterrupted run. Marked slow; about a minute on a quiet machine."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.reliability.common import TINY
from tests.train.common import write_features_data
from xclass.train.report import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 60


def _args(data, run):
    return ["train", f"data.path={data}", f"train.out_dir={run}", f"train.max_steps={STEPS}",
            "train.checkpoint_every=1", "train.keep_last=2", "optim.schedule=constant", *TINY]


def _by_step(run):
    out = {}
    for r in read_metrics(run):
        if "loss" in r:
            out[int(r["step"])] = r["loss"]  # a re-run step keeps its last value
    return out


@pytest.mark.slow
def test_kill9_anywhere_loses_nothing(tmp_path):
    from xclass.cli import main

    data = write_features_data(str(tmp_path / "d"))
    ref = str(tmp_path / "ref")
    assert main(_args(data, ref)) == 0
    want = _by_step(ref)
    run = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu")
    rng = random.Random(1234)
    kills, t_end = 0, time.time() + 25
    while time.time() < t_end and kills < 3:
        proc = subprocess.Popen([sys.executable, "-m", "xclass.cli", *_args(data, run)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        metrics = os.path.join(run, "metrics.jsonl")
        before = os.path.getsize(metrics) if os.path.exists(metrics) else 0
        while proc.poll() is None and (not os.path.exists(metrics) or os.path.getsize(metrics) <= before):
            time.sleep(0.02)  # training (not start-up) is under way
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    final = subprocess.run([sys.executable, "-m", "xclass.cli", *_args(data, run)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    got = _by_step(run)
    assert kills >= 2, "the run finished before it could be killed twice; make it longer"
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[s] for s in sorted(want)], [want[s] for s in sorted(want)])
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.endswith(".tmp")]
