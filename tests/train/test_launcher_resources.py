"""Ray resources checked before Ray Train waits for them: a local Ray that cannot hold the
workers is one error line (or, GPUs missing with cluster.allow_cpu_fallback, CPU workers over
gloo); a cluster that may grow gets a warning and the request as it is."""
import logging

import pytest

from xclass.config import load_config
from xclass.config_types import ConfigError
from xclass.launcher import check_ray_resources


def _cfg(*extra):
    return load_config(None, ["cluster.workers=8", "cluster.cpus_per_worker=2", *extra])


def test_enough_resources_leave_the_config_as_it_is():
    cfg = _cfg("cluster.use_gpu=true", "cluster.backend=nccl")
    assert check_ray_resources(cfg, {"CPU": 16.0, "GPU": 8.0}) is cfg
    cfg = _cfg()
    assert check_ray_resources(cfg, {"CPU": 16.0}) is cfg


def test_a_local_ray_without_the_gpus_is_one_error_naming_them():
    with pytest.raises(ConfigError, match=r"cluster.workers=8 needs 8 GPUs \(cluster.use_gpu: one each\), "
                                          r"it has 1 in the local Ray"):
        check_ray_resources(_cfg("cluster.use_gpu=true"), {"CPU": 64.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match=r"needs 16 CPUs \(cluster.cpus_per_worker=2 each\), it has 4"):
        check_ray_resources(_cfg(), {"CPU": 4.0})


def test_cpu_fallback_runs_cpu_workers_over_gloo(caplog):
    cfg = _cfg("cluster.use_gpu=true", "cluster.backend=nccl", "cluster.allow_cpu_fallback=true")
    with caplog.at_level(logging.WARNING, logger="xclass"):
        out = check_ray_resources(cfg, {"CPU": 16.0})
    assert not out.cluster.use_gpu and out.cluster.backend == "gloo" and out.cluster.workers == 8
    assert "training on CPU workers over gloo" in caplog.text
    with pytest.raises(ConfigError, match="CPUs"):        # the fallback does not make up for CPUs
        check_ray_resources(cfg, {"CPU": 2.0})


def test_a_cluster_may_grow_so_the_run_waits_with_a_warning(caplog):
    cfg = _cfg("cluster.use_gpu=true", "cluster.address=auto")
    with caplog.at_level(logging.WARNING, logger="xclass"):
        assert check_ray_resources(cfg, {"CPU": 8.0, "GPU": 2.0}) is cfg
    assert "8 GPUs" in caplog.text and "waiting" in caplog.text and "the Ray cluster at auto" in caplog.text
