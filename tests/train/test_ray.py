"""Ray Train launcher on a local Ray instance: 2 workers train to the single-process losses,
and a worker killed mid-run is replaced, the run resumes from its last checkpoint and finishes."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.train.common import features_config, losses, write_features_data
from xclass.parallel import ParallelContext
from xclass.train.loop import train
from xclass.train.report import read_metrics

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.2",
             object_store_memory=200 * 2**20, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_features_data(str(tmp_path_factory.mktemp("feat")))


def test_two_ray_workers_equal_single_process(local_ray, data, tmp_path):
    from xclass.launcher import run_on_ray

    one = str(tmp_path / "one")
    train(features_config(data, one), ParallelContext.single())
    cfg = features_config(data, str(tmp_path / "ray"), "cluster.workers=2")
    final = run_on_ray(cfg)
    assert final["step"] == 6
    np.testing.assert_allclose(losses(str(tmp_path / "ray")), losses(one), rtol=2e-5, atol=2e-6)
    # both ranks wrote their metrics; rank 1's file exists too
    assert len(read_metrics(str(tmp_path / "ray"), rank=1)) == 6


def _kill_rank1_after(run_dir, step, done):
    """SIGKILL the rank-1 worker once rank 0 has logged ``step``."""
    while not done.is_set():
        try:
            rows = read_metrics(run_dir)
        except ValueError:  # a line being written: read again
            rows = []
        if rows and rows[-1]["step"] >= step:
            with open(os.path.join(run_dir, "workers", "rank1.json")) as f:
                os.kill(json.load(f)["pid"], signal.SIGKILL)
            done.set()
            return
        time.sleep(0.05)


def test_killed_worker_restarts_from_checkpoint(local_ray, data, tmp_path):
    from xclass.launcher import run_on_ray

    common = ("train.max_steps=60", "train.checkpoint_every=5", "optim.schedule=constant")
    ref = str(tmp_path / "ref")
    train(features_config(data, ref, *common), ParallelContext.single())
    run = str(tmp_path / "killed")
    cfg = features_config(data, run, *common, "cluster.workers=2", "cluster.max_failures=2")
    done = threading.Event()
    killer = threading.Thread(target=_kill_rank1_after, args=(run, 12, done), daemon=True)
    killer.start()
    final = run_on_ray(cfg)
    done.set()
    killer.join(5)
    rows = read_metrics(run)
    steps = [r["step"] for r in rows]
    assert final["step"] == 60 and steps[-1] == 60
    resumed = [i for i, r in enumerate(rows) if r.get("event") == "resumed"]
    assert resumed, "no resume was logged: the worker was never killed"
    start = rows[resumed[-1]]["step"]
    # resumed from a checkpoint written before the kill (every 5 steps), training went on from it
    assert 0 < start < 60 and start % 5 == 0
    assert rows[resumed[-1] + 1]["step"] == start + 1
    # the steps after the resume and the end match the uninterrupted reference
    ref_loss = dict(zip(range(1, 61), losses(ref)))
    after = [r for r in rows[resumed[-1] + 1:] if "loss" in r]
    np.testing.assert_allclose([r["loss"] for r in after], [ref_loss[r["step"]] for r in after],
                               rtol=1e-4, atol=1e-5)


def test_a_worker_user_error_reaches_the_driver_as_itself(local_ray, data, tmp_path):
    """A config error raised inside the Ray workers (an encoder parameter it does not take) comes out of
    run_on_ray as that error, so `xclass train --workers 2` prints it as one line."""
    from xclass.config_types import ConfigError
    from xclass.launcher import run_on_ray

    cfg = features_config(data, str(tmp_path / "bad"), "cluster.workers=2", "model.params.bogus=1")
    with pytest.raises(ConfigError, match="unknown key 'model.params.bogus'"):
        run_on_ray(cfg)


def test_gpu_workers_on_a_local_ray_without_gpus(local_ray, data, tmp_path):
    """Ray Train would wait for GPUs the local Ray never gets: one error line at once instead, or
    with cluster.allow_cpu_fallback the workers train on the CPU over gloo."""
    from xclass.config_types import ConfigError
    from xclass.launcher import run_on_ray

    t0 = time.monotonic()
    cfg = features_config(data, str(tmp_path / "gpu"), "cluster.workers=2", "cluster.use_gpu=true",
                          "cluster.backend=nccl")
    with pytest.raises(ConfigError, match="cluster.workers=2 needs 2 GPUs"):
        run_on_ray(cfg)
    assert time.monotonic() - t0 < 30
    cfg = features_config(data, str(tmp_path / "fallback"), "cluster.workers=2", "cluster.use_gpu=true",
                          "cluster.backend=nccl", "cluster.allow_cpu_fallback=true")
    assert run_on_ray(cfg)["step"] == 6


def test_an_ensemble_on_two_ray_workers_equals_its_members_alone(local_ray, data, tmp_path):
    """``train.ensemble=2`` through the launcher: each member runs on the 2 workers and trains to
    the losses of a single-process run with that member's seed."""
    from xclass.launcher import run_training
    from xclass.train.members import read_members

    final = run_training(features_config(data, str(tmp_path / "ens"), "cluster.workers=2", "train.ensemble=2",
                                         "train.seed=4"))
    assert [r["step"] for r in final["members"]] == [6, 6]
    for member, seed in zip(read_members(str(tmp_path / "ens")), (4, 1004)):
        one = str(tmp_path / f"one{seed}")
        train(features_config(data, one, f"train.seed={seed}"), ParallelContext.single())
        np.testing.assert_allclose(losses(member), losses(one), rtol=2e-5, atol=2e-6)
    a, b = (losses(m) for m in read_members(str(tmp_path / "ens")))
    assert not np.allclose(a, b)   # two different initialisations
