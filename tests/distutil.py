"""run_on_ranks(fn, world_size, *args): run ``fn(ctx, *args)`` on N gloo processes.

A small replacement for torch's private MultiProcessTestCase. Each rank gets a
:class:`xclass.parallel.ParallelContext`; whatever ``fn`` returns is saved with
``torch.save`` and handed back to the test as a list ordered by rank, so the test
compares ranks' results with a dense reference in the parent process.
``fn`` must be a module-level function (spawn pickles it by name).

The rank processes are kept for the whole session, one *pool* per world size: spawning W fresh
Python processes, importing torch and joining a gloo group costs seconds per call, and the suite
makes dozens of calls. A pool runs one call at a time; every rank runs ``fn`` with the same
process group. When a call fails or times out its pool is killed (a failed rank can leave the
others blocked in a collective) and the next call starts a fresh one. ``fresh=True`` runs a call
on its own processes (for code that changes process-wide state a later call could see).
Functions that patch module attributes must restore them before returning.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List

import torch


def _serve(rank: int, world: int, port: int, tasks: Any) -> None:
    """One pooled rank: join the group once, then run tasks until told to stop."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    from xclass.parallel import ParallelContext
    from xclass.parallel.launch import clean_exit, init_gloo

    init_gloo(rank, world, port)
    import torch.distributed as dist

    ctx = ParallelContext(rank=rank, world_size=world, group=dist.group.WORLD)
    while True:
        task = tasks.get()
        if task is None:
            clean_exit(0)
        fn, args, out = task
        try:
            res = {"ok": fn(ctx, *args)}
        except BaseException:  # noqa: BLE001 - report every failure to the parent
            res = {"error": traceback.format_exc()}
        torch.save(res, out + ".tmp")
        os.replace(out + ".tmp", out)


class _Pool:
    def __init__(self, world: int) -> None:
        from xclass.parallel.launch import free_port

        spawn = mp.get_context("spawn")
        port = free_port()
        self.world, self.closed = world, False
        self.queues = [spawn.Queue() for _ in range(world)]
        self.procs = [spawn.Process(target=_serve, args=(r, world, port, self.queues[r]), daemon=True)
                      for r in range(world)]
        for p in self.procs:
            p.start()

    def run(self, fn: Callable, args: tuple, timeout: float) -> List[Any]:
        with tempfile.TemporaryDirectory() as tmp:
            outs = [os.path.join(tmp, f"rank{r}.pt") for r in range(self.world)]
            for q, out in zip(self.queues, outs):
                q.put((fn, args, out))
            deadline = time.monotonic() + timeout
            got: Dict[int, Any] = {}
            while len(got) < self.world:
                for r, o in enumerate(outs):
                    if r not in got and os.path.exists(o):
                        got[r] = torch.load(o, weights_only=False)
                        if "error" in got[r]:  # the others may wait in a collective it never joins
                            raise RuntimeError(f"rank {r} failed:\n{got[r]['error']}")
                dead = [p for p in self.procs if not p.is_alive()]
                if len(got) < self.world and (dead or time.monotonic() > deadline):
                    raise RuntimeError(f"rank process {dead[0].pid} died (exit code {dead[0].exitcode})"
                                       if dead else f"ranks did not finish in {timeout}s")
                time.sleep(0.01)
        return [got[r]["ok"] for r in range(self.world)]

    def close(self, kill: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if not kill:
            for q in self.queues:
                q.put(None)
        for p in self.procs:
            p.join(0 if kill else 10)
            if p.is_alive():
                p.kill()
                p.join()


_POOLS: Dict[int, _Pool] = {}


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def run_on_ranks(fn: Callable, world_size: int, *args: Any, timeout: float = 180,
                 fresh: bool = False) -> List[Any]:
    """Run ``fn(ctx, *args)`` on ``world_size`` gloo ranks; return results by rank."""
    pool = _Pool(world_size) if fresh else _POOLS.get(world_size)
    if pool is None:
        pool = _POOLS[world_size] = _Pool(world_size)
    try:
        return pool.run(fn, args, timeout)
    except BaseException:
        pool.close(kill=True)
        if _POOLS.get(world_size) is pool:
            del _POOLS[world_size]
        raise
    finally:
        if fresh:
            pool.close()


def run_on_world(fn: Callable, world_size: int, *args: Any) -> List[Any]:
    """World size 1 runs ``fn`` in this process with no process group (the rule that world
    size 1 needs none); larger worlds go through :func:`run_on_ranks`."""
    if world_size == 1:
        from xclass.parallel import ParallelContext

        return [fn(ParallelContext.single(), *args)]
    return run_on_ranks(fn, world_size, *args)


def cat_ranks(results: List[Any], key: str) -> torch.Tensor:
    """Concatenate one sharded tensor (``results[r][key]``) over ranks in rank order."""
    return torch.cat([r[key] for r in results], 0)
