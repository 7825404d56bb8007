"""How ``xclass train`` starts the one loop: in this process, or on Ray Train workers.

One command from a laptop to a cluster: ``cluster.workers == 1`` with no address trains
in-process; otherwise a Ray Train ``TorchTrainer`` runs :func:`worker_main` on N workers
(an embedded local Ray when ``cluster.address`` is unset, else the given cluster). Ray
only launches: the worker calls :func:`xclass.train.loop.train` like any other caller.
Fault tolerance: Ray restarts the worker group up to ``cluster.max_failures`` times and
the loop resumes from the newest checkpoint in ``train.out_dir`` (which must therefore be
on storage every node can reach).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Dict, Optional

from xclass.config import RunConfig
from xclass.config_types import ConfigError

log = logging.getLogger("xclass")


def run_training(cfg: RunConfig) -> Dict[str, Any]:
    """Train ``cfg``; returns the final metrics row of rank 0 (an ensemble, ``train.ensemble`` > 1:
    the members one after the other, :mod:`xclass.train.members`)."""
    from xclass.train.members import refuse_ensemble, run_ensemble
    from xclass.train.rundir import prepare_run_dir

    if cfg.train.ensemble > 1:
        return run_ensemble(cfg, run_training, log=lambda line: print(line, file=sys.stderr, flush=True))
    if cfg.train.init_from:
        refuse_ensemble(cfg.train.init_from, "train.init_from")
    if cfg.cluster.workers <= 1 and not cfg.cluster.address:
        prepare_run_dir(cfg)
        _cpu_env(cfg)
        from xclass.parallel.netbind import bind_stores_to_host
        from xclass.parallel import ParallelContext
        from xclass.parallel.device import run_device
        from xclass.train.loop import train

        bind_stores_to_host()  # DeepSpeed's one-process rendezvous: loopback only

        return train(cfg, ParallelContext.single(run_device(cfg, 0)))
    return run_on_ray(cfg)


def _cpu_env(cfg: RunConfig) -> None:
    """Per training process, before any model is built: DeepSpeed's CPU accelerator and the heap
    malloc setting of xclass.perf (CPU runs; opt out with XCLASS_MALLOC=system)."""
    if not cfg.cluster.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from xclass.perf import tune_malloc

        tune_malloc()


def ray_init(cfg: RunConfig) -> None:
    """Join ``cluster.address`` (token authentication required) or start a quiet local Ray that
    listens on 127.0.0.1 only (see xclass/parallel/netbind.py and docs/security.md)."""
    from xclass.parallel import netbind

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    if cfg.cluster.address:
        netbind.cluster_ray_env()
    else:
        netbind.local_ray_env()
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Worker output stays in Ray's log files; the driver shows progress from metrics.jsonl.
    common = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                  configure_logging=True,
                  runtime_env={"worker_process_setup_hook": "xclass.parallel.netbind.setup_worker"})
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, **common)
        return
    ncpu = max(os.cpu_count() or 1, cfg.cluster.workers * cfg.cluster.cpus_per_worker)
    ray.init(num_cpus=ncpu, object_store_memory=200 * 2**20, **common)


def check_ray_resources(cfg: RunConfig, have: Dict[str, float]) -> RunConfig:
    """Ray Train waits until the cluster has ``cluster.cpus_per_worker`` CPUs (and one GPU with
    ``cluster.use_gpu``) for every worker, and says nothing here (Ray logs errors only). ``have``:
    ``ray.cluster_resources()``. A local Ray (no ``cluster.address``) never grows, so a request it
    cannot meet is a ConfigError naming what is missing, or, GPUs missing with
    ``cluster.allow_cpu_fallback``, the run goes on CPU workers over gloo with a warning. A
    cluster may grow (an autoscaler adds nodes): a warning says what the run waits for."""
    c = cfg.cluster
    short = []
    if have.get("CPU", 0) < c.workers * c.cpus_per_worker:
        short.append(f"{c.workers * c.cpus_per_worker} CPUs (cluster.cpus_per_worker={c.cpus_per_worker} each), "
                     f"it has {have.get('CPU', 0):g}")
    gpu_short = c.use_gpu and have.get("GPU", 0) < c.workers
    if gpu_short:
        short.append(f"{c.workers} GPUs (cluster.use_gpu: one each), it has {have.get('GPU', 0):g}")
    if not short:
        return cfg
    where = f"the Ray cluster at {c.address}" if c.address else "the local Ray (no cluster.address)"
    why = f"cluster.workers={c.workers} needs {' and '.join(short)} in {where}"
    if c.address:
        log.warning(f"{why}: waiting until it has them (an autoscaler may add nodes)")
        return cfg
    if gpu_short and len(short) == 1 and c.allow_cpu_fallback:
        log.warning(f"{why}; training on CPU workers over gloo (cluster.allow_cpu_fallback=true)")
        return dataclasses.replace(cfg, cluster=dataclasses.replace(c, use_gpu=False, backend="gloo"))
    raise ConfigError(f"{why}; lower cluster.workers (--workers), or join a cluster (cluster.address)")


def run_on_ray(cfg: RunConfig) -> Dict[str, Any]:
    """Run :func:`worker_main` on ``cluster.workers`` Ray Train workers (after
    :func:`check_ray_resources` and the run-directory rules of ``prepare_run_dir``)."""
    _cpu_env(cfg)
    ray_init(cfg)
    import ray

    from xclass.train.rundir import prepare_run_dir

    cfg = check_ray_resources(cfg, ray.cluster_resources())
    prepare_run_dir(cfg)   # after the check: a run refused here leaves an old run where it was
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = os.path.abspath(cfg.train.out_dir)
    cfg_dict = cfg.to_dict()
    cfg_dict["train"]["out_dir"] = out
    if cfg.deepspeed.config:
        cfg_dict["deepspeed"]["config"] = os.path.abspath(cfg.deepspeed.config)
    cfg_dict["data"]["path"] = os.path.abspath(cfg.data.path)
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"cfg": cfg_dict},
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.workers, use_gpu=cfg.cluster.use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker,
                                  **({"GPU": 1} if cfg.cluster.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if cfg.cluster.use_gpu else cfg.cluster.backend),
        run_config=RayRunConfig(name="xclass", storage_path=os.path.join(out, "ray"),
                                failure_config=FailureConfig(max_failures=cfg.cluster.max_failures)),
    )
    try:
        with ProgressTail(out, cfg.train.progress):
            result = trainer.fit()
        error = result.error
    except Exception as exc:  # noqa: BLE001 - Ray Train raises its failures from fit() too
        error = exc
    if error is not None:
        raise worker_user_error(error) or error
    return _final_row(out)


def worker_user_error(error: BaseException) -> Optional[BaseException]:
    """The first (lowest-rank) worker's user error (config, data, checkpoint, diverged run) inside a
    Ray Train failure, so the command line prints it as one line; None for anything else."""
    from xclass.errors import is_user_error

    failures = getattr(error, "worker_failures", None) or {}
    for rank in sorted(failures):
        exc = failures[rank]
        for e in (exc, getattr(exc, "cause", None), exc.__cause__):
            if e is not None and is_user_error(e):
                return e
    return None


class ProgressTail:
    """Driver-side progress: follows rank 0's metrics.jsonl while Ray workers train."""

    def __init__(self, run_dir: str, enabled: bool = True, poll_s: float = 1.0, every_s: float = 5.0) -> None:
        self.run_dir, self.enabled, self.poll_s, self.every_s = run_dir, enabled, poll_s, every_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "ProgressTail":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from xclass.train.report import metrics_path

        path, seen, last_print, pending = metrics_path(self.run_dir, 0), 0, 0.0, None
        while True:
            stopping = self._stop.wait(self.poll_s)
            try:
                with open(path) as f:
                    lines = f.readlines()
            except FileNotFoundError:
                lines = []
            for line in lines[seen:]:
                try:
                    r = json.loads(line)
                except ValueError:
                    break
                seen += 1
                if "loss" in r:
                    pending = r
            if pending is not None and (stopping or time.time() - last_print >= self.every_s):
                print(f"[xclass] step {pending['step']}: loss {pending['loss']:.4f}, "
                      f"{pending.get('samples_per_s', 0):.0f} samples/s, "
                      f"head {pending.get('head_mem_mb', 0):.2f} MiB/rank", file=sys.stderr, flush=True)
                pending, last_print = None, time.time()
            if stopping:
                return


def _final_row(run_dir: str) -> Dict[str, Any]:
    from xclass.train.report import read_metrics

    rows = read_metrics(run_dir)
    return rows[-1] if rows else {}


def worker_main(config: Dict[str, Any]) -> None:
    """Ray Train worker: rebuild the config, take rank/world from Ray's process group, train."""
    import torch

    cfg = RunConfig.from_dict(config["cfg"], source="<ray worker config>")
    _cpu_env(cfg)
    torch.set_num_threads(max(1, cfg.cluster.cpus_per_worker))
    import ray.train

    from xclass.parallel import ParallelContext
    from xclass.parallel.device import run_device
    from xclass.train.loop import train

    local_rank = ray.train.get_context().get_local_rank()
    # Ray decides which GPU(s) a worker sees (CUDA_VISIBLE_DEVICES): ask it for the index
    gpu_index = _ray_gpu_index(local_rank) if cfg.cluster.use_gpu else local_rank
    ctx = ParallelContext.from_env()
    ctx = ParallelContext(ctx.rank, ctx.world_size, ctx.group, local_rank, run_device(cfg, gpu_index))

    def report(metrics: Dict[str, Any], path: Optional[str]) -> None:
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    train(cfg, ctx, report=report)


def _ray_gpu_index(local_rank: int) -> int:
    """This Ray Train worker's CUDA index among the devices it sees (``ray.train.torch.get_device``)."""
    import torch

    if not torch.cuda.is_available():
        return local_rank  # resolve_device reports the missing GPU
    from ray.train.torch import get_device

    dev = get_device()
    return int(dev.index or 0) if dev.type == "cuda" else local_rank
