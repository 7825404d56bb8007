"""CPU guards that catch device bugs without a GPU.

1. Every tensor factory call (``torch.zeros``, ``ones``, ``empty``, ``full``, ``eye``, ``arange``,
   ``tensor``, ``rand*``, ``linspace``...) in the package names its ``device=``: a
   factory without one makes a CPU tensor, which on a GPU run meets CUDA tensors and crashes (or,
   handed to NCCL, hangs). ``*_like`` and ``Tensor.new_*`` follow their input and are fine.
   Module constructors are no exception: their small parameters and buffers follow the class rows
   they accompany (or ``ctx.device``). Values drawn on the host on purpose (seeded host generators,
   rows read from files) say ``device="cpu"`` at the call. The only exception left is the ALLOWED
   list below, with its reason.
2. ``ParallelContext.device`` reaches everything: after a short ``train()`` run on an explicit
   device, every parameter, buffer and optimizer-state tensor of the encoder and the head is on
   that device (on a GPU machine tests/gpu runs the same check with ``cuda``).
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Tuple

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: scanned: the whole package (the training path, and evaluation / export, which run on the
#: GPU too with --gpu)
TRAINING_PATH = ["xclass"]

FACTORIES = {"zeros", "ones", "empty", "full", "eye", "arange", "tensor", "as_tensor", "rand", "randn",
             "randint", "randperm", "linspace", "logspace", "empty_strided", "tril_indices", "triu_indices",
             "normal", "bernoulli", "scalar_tensor"}

#: (file, enclosing function) -> why a factory without device= is right there
ALLOWED: Dict[Tuple[str, str], str] = {
    ("xclass/models/decoders.py", "*"):
        "decoders build host tensors from the reader's numpy batch; the loop copies them to the device",
}


def _files() -> List[str]:
    out = []
    for p in TRAINING_PATH:
        full = os.path.join(ROOT, p)
        if os.path.isfile(full):
            out.append(p)
            continue
        for d, _, names in os.walk(full):
            out += [os.path.relpath(os.path.join(d, n), ROOT) for n in sorted(names) if n.endswith(".py")]
    return sorted(out)


def _factory_calls_without_device(path: str, root: str = ROOT) -> List[Tuple[int, str, str]]:
    """(line, factory, enclosing function) of every ``torch.<factory>(...)`` without ``device=``."""
    with open(os.path.join(root, path)) as f:
        tree = ast.parse(f.read(), path)
    found: List[Tuple[int, str, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and isinstance(child.func.value, ast.Name) and child.func.value.id == "torch"
                    and child.func.attr in FACTORIES
                    and not any(k.arg == "device" or k.arg is None for k in child.keywords)):
                found.append((child.lineno, child.func.attr, func))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_training_path_factories_name_their_device():
    bad = []
    for path in _files():
        for line, fac, func in _factory_calls_without_device(path):
            if (path, func) in ALLOWED or (path, "*") in ALLOWED:
                continue
            bad.append(f"{path}:{line} torch.{fac}(...) in {func}() has no device=")
    assert not bad, "tensor factories without device= (create them on the input's device):\n" + "\n".join(bad)


def test_the_guard_sees_a_missing_device(tmp_path):
    """The scanner itself: a factory without device= is found, with= and **kwargs are not."""
    src = ("import torch\n"
           "def f(x, **kw):\n"
           "    a = torch.zeros(3)\n"
           "    b = torch.ones(3, device=x.device)\n"
           "    c = torch.full((2,), 1.0, **kw)\n"
           "    return torch.arange(4, dtype=torch.int64)\n")
    (tmp_path / "m.py").write_text(src)
    assert _factory_calls_without_device("m.py", str(tmp_path)) == [(3, "zeros", "f"), (6, "arange", "f")]


def test_allow_list_entries_exist():
    """Every allow-list entry names a file and function that still exist (no stale exemptions)."""
    for (path, func), why in ALLOWED.items():
        assert why and os.path.exists(os.path.join(ROOT, path)), path
        if func != "*":
            with open(os.path.join(ROOT, path)) as f:
                assert f"def {func}(" in f.read(), (path, func)
            assert any(f == func for _, _, f in _factory_calls_without_device(path)), (path, func)


# ---------------------------------------------------------------------------- device propagation

def _tensors_of(obj, prefix: str):
    """(name, tensor) of every tensor reachable in nested dicts/lists (optimizer state dicts)."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors_of(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors_of(v, f"{prefix}[{i}]")


def _state_tensors(s) -> List[Tuple[str, torch.Tensor]]:
    out = [(f"encoder.{n}", t) for n, t in [*s.engine.module.named_parameters(), *s.engine.module.named_buffers()]]
    out += [(f"head.{n}", t) for n, t in [*s.head.named_parameters(), *s.head.named_buffers()]]
    out += list(_tensors_of(s.engine.optimizer.state_dict()["state"], "encoder_opt"))
    head_state = getattr(s.head_opt, "state", None)
    if isinstance(head_state, dict):
        out += list(_tensors_of(head_state, "head_opt"))
    return out


@pytest.mark.parametrize("head", ["partial_fc", "zloss_efficient", "angproto"])
def test_run_device_reaches_every_tensor(tmp_path, monkeypatch, head):
    """train() on ctx.device: every parameter, buffer and optimizer state ends there. The device
    is compared by object, so a tensor made elsewhere ("cpu" vs the run's device) is caught on
    a GPU machine; on the CPU the test still proves ctx.device is what build_setup uses."""
    from tests.train.common import features_config, write_features_data
    from xclass.parallel import ParallelContext
    from xclass.train import loop as loop_mod

    data = write_features_data(str(tmp_path / "d"))
    extra = {"partial_fc": ["head.margin=arcface", "head.sample_rate=0.5"],
             "zloss_efficient": ["head.name=zloss_efficient", "head.params={a: 1.0, b: 2.0}"],
             "angproto": ["head.name=angproto", "head.params={}", "data.sampler=m_per_class", "data.m_per_class=2",
                          "data.shard_mode=rows"]}[head]
    seen = {}
    real = loop_mod._optimizer_step

    def spy(s, cfg, ctx, step, total):
        out = real(s, cfg, ctx, step, total)
        seen["setup"], seen["device"] = s, ctx.device
        return out

    monkeypatch.setattr(loop_mod, "_optimizer_step", spy)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    cfg = features_config(data, str(tmp_path / "run"), *extra, "train.max_steps=2")
    loop_mod.train(cfg, ParallelContext.single(device))
    s = seen["setup"]
    assert seen["device"] == device and s.device == device
    with open(os.path.join(str(tmp_path / "run"), "workers", "rank0.json")) as f:
        assert __import__("json").load(f)["device"] == str(device)
    tensors = _state_tensors(s)
    assert len(tensors) >= 3
    wrong = [(n, str(t.device)) for n, t in tensors if t.device != device]
    assert not wrong, f"tensors off the run's device {device}: {wrong}"


# ---------------------------------------------------------------------------- the device decision

def test_resolve_device_without_gpu():
    from xclass.config_types import ConfigError
    from xclass.parallel.device import backend_for, resolve_device

    assert resolve_device(False) == torch.device("cpu") and backend_for("cpu") == "gloo"
    assert backend_for("cuda:1") == "nccl"
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the missing-GPU paths are not reachable")
    with pytest.raises(ConfigError, match="allow_cpu_fallback"):
        resolve_device(True, 0)
    assert resolve_device(True, 0, allow_cpu_fallback=True) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --gpu would train on it")
def test_cli_gpu_without_cuda_is_one_line_exit_2(tmp_path):
    """`xclass train --gpu` on a machine without CUDA: one clear line, exit 2, nothing written."""
    import subprocess
    import sys

    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "xclass.cli", "train", "--gpu", f"train.out_dir={run}",
                        f"data.path={tmp_path / 'nodata'}"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln.lower()]
    assert "Traceback" not in p.stderr and len(errors) == 1, p.stderr
    assert "cluster.use_gpu" in errors[0] and "allow_cpu_fallback" in errors[0], p.stderr
    assert not run.exists()
