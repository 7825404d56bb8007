"""The pooled rank processes of tests/distutil.py: results by rank, the same processes reused, a
failing rank surfaces its traceback and a fresh pool serves the next call."""
import os

import pytest

from tests.distutil import run_on_ranks

pytestmark = pytest.mark.dist


def _who(ctx):
    return ctx.rank, ctx.world_size, os.getpid()


def _fail_on_rank_1(ctx):
    if ctx.rank == 1:
        raise ValueError("boom on rank 1")
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1), group=ctx.group)  # rank 0 waits in a collective rank 1 never joins
    return ctx.rank


def test_pool_reuses_processes_and_recovers_from_a_failure():
    first = run_on_ranks(_who, 2)
    assert [r[:2] for r in first] == [(0, 2), (1, 2)]
    assert run_on_ranks(_who, 2) == first                      # same processes, same pids
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        run_on_ranks(_fail_on_rank_1, 2, timeout=60)
    after = run_on_ranks(_who, 2)                              # a new pool
    assert [r[:2] for r in after] == [(0, 2), (1, 2)] and {p for *_, p in after}.isdisjoint(p for *_, p in first)
    fresh = run_on_ranks(_who, 2, fresh=True)
    assert {p for *_, p in fresh}.isdisjoint(p for *_, p in after)
