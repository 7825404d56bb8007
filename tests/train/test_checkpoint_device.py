"""Checkpoint device handling on the CPU: the random state a checkpoint keeps, a GPU checkpoint's
CUDA state ignored by a CPU run, and head optimizer state following the head's device."""
from __future__ import annotations

import torch

from xclass.train import checkpoint as ckpt


def test_cpu_run_keeps_the_cpu_generator_only():
    st = ckpt.rng_state("cpu")
    assert set(st) == {"rng"}
    a = torch.rand(3)
    torch.manual_seed(123)
    ckpt.restore_rng(st, torch.device("cpu"))
    assert torch.equal(torch.rand(3), a)  # the draws after the checkpoint repeat


def test_gpu_checkpoint_resumes_on_the_cpu():
    """A state saved on a CUDA run carries ``cuda_rng``; a CPU run restores the CPU part only."""
    st = ckpt.rng_state("cpu")
    a = torch.rand(2)
    st["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)  # what torch.cuda.get_rng_state returns
    ckpt.restore_rng(st, "cpu")
    assert torch.equal(torch.rand(2), a)


def test_head_state_loads_onto_the_asked_device(tmp_path):
    path = str(tmp_path)
    torch.save({"head": {"w": torch.ones(2)}, **ckpt.rng_state("cpu")}, ckpt.head_file(path, 0))
    hs = ckpt.load_head_state(path, 0, map_location=torch.device("cpu"))
    assert hs["head"]["w"].device == torch.device("cpu") and hs["rng"].dtype == torch.uint8


def test_head_optimizer_state_follows_the_head():
    """load_state_dict puts the (possibly resharded, host-assembled) state where the head is."""
    from types import SimpleNamespace

    from xclass.heads.optim import ShardedHeadOptimizer

    head = SimpleNamespace(step_count=torch.zeros((), dtype=torch.int64), group=None)
    opt = ShardedHeadOptimizer(head, "sgd", 0.1)
    mom = torch.arange(4.0)
    opt.load_state_dict({"name": "sgd", "lr": 0.2, "skipped": 1, "state": {"weight": {"momentum": mom}}})
    got = opt.state["weight"]["momentum"]
    assert got.device == head.step_count.device and torch.equal(got, mom) and got is not mom
    assert opt.state_dict()["skipped"] == 1


def test_host_step_follows_loads_and_moves():
    """The host copy of step_count advances with the optimizer without a read, and is re-read after
    anything else changes the buffer (a checkpoint load, a move to another device)."""
    from xclass.heads.base import advance_step, host_step

    m = torch.nn.Module()
    m.register_buffer("step_count", torch.zeros((), dtype=torch.int64))
    assert host_step(m) == 0
    advance_step(m)
    advance_step(m)
    assert host_step(m) == 2 and int(m.step_count) == 2
    m.load_state_dict({"step_count": torch.tensor(7)})
    assert host_step(m) == 7
    m.to(torch.float64)  # integer buffers stay, but a move may replace the tensor object
    m.step_count = m.step_count.clone()
    advance_step(m)
    assert host_step(m) == 8 and int(m.step_count) == 8
