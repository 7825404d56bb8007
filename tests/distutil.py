"""run_on_ranks(fn, world_size, *args): run ``fn(ctx, *args)`` on N gloo processes.

A ~40-line replacement for torch's private MultiProcessTestCase. Each rank gets a
:class:`xclass.parallel.ParallelContext`; whatever ``fn`` returns is saved with
``torch.save`` and handed back to the test as a list ordered by rank, so the test
compares ranks' results with a dense reference in the parent process.
``fn`` must be a module-level function (spawn pickles it by name).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import traceback
from typing import Any, Callable, List

import torch


def _worker(fn: Callable, rank: int, world: int, port: int, out: str, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    from xclass.parallel import ParallelContext
    from xclass.parallel.launch import clean_exit, init_gloo

    code = 0
    try:
        init_gloo(rank, world, port)
        import torch.distributed as dist

        ctx = ParallelContext(rank=rank, world_size=world, group=dist.group.WORLD)
        res = fn(ctx, *args)
        torch.save({"ok": res}, out)
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        torch.save({"error": traceback.format_exc()}, out)
        code = 1
    clean_exit(code)


def run_on_ranks(fn: Callable, world_size: int, *args: Any, timeout: float = 180) -> List[Any]:
    """Run ``fn(ctx, *args)`` on ``world_size`` gloo ranks; return results by rank."""
    from xclass.parallel.launch import free_port

    port = free_port()
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.pt") for r in range(world_size)]
        procs = [
            spawn.Process(target=_worker, args=(fn, r, world_size, port, outs[r], args))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        for p in procs:
            if p.is_alive():
                p.kill()
                raise TimeoutError(f"rank process {p.pid} did not finish in {timeout}s")
        results = []
        for r, out in enumerate(outs):
            if not os.path.exists(out):
                raise RuntimeError(f"rank {r} died without a result (exit code {procs[r].exitcode})")
            got = torch.load(out, weights_only=False)
            if "error" in got:
                raise RuntimeError(f"rank {r} failed:\n{got['error']}")
            results.append(got["ok"])
        return results


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
