"""The ``zloss`` rows of tools/bench_gpu.py: ``zloss_efficient`` (the exact D-independent
update) vs full log-softmax cross-entropy over D classes, d = 128, m = 256 rows, fp32.

Run alone, ``--count-ops`` prints what one steady ``zloss_efficient`` step (head forward +
backward + the head's optimizer step, world size 1) sends to the backend, one JSON row per D:
``{"bench": "zloss_ops", "ops": N, "host_reads": K, "op_counts": {...}, "reads": [...], "cpu_step_ms": t}``.
``ops`` counts the aten operations that reach the kernel level (each is at least one kernel
launch on a GPU; views and ``empty`` allocations, which launch nothing, are counted apart as
``views`` and ``allocs``); ``host_reads`` the operations that would make the host wait for a
GPU (``item``/``bool``/``float``, ``nonzero``, boolean-mask indexing...), each with the
function that does it; ``aten_syncs`` the same seen at the aten level (which also shows reads made
inside torch, such as the error check of ``torch.linalg.inv``). On the CPU the label range check
(``check_on_device``) is a host read; on CUDA it is ``torch._assert_async`` and waits for nothing.
The step is the one timed in the ``zloss`` rows, so a GPU session can relate launch counts to
step time (``--device cuda`` times it there too)::

    python tools/bench_gpu_zloss.py --count-ops [--D 100000] [--d 128] [--m 256] [--steps 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import types
from collections import Counter
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402



def _bench_gpu():
    """tools/bench_gpu.py, imported on use (it imports this module at load time)."""
    import bench_gpu

    return bench_gpu


def make_zloss_step(D: int, d: int, m: int, device: torch.device) -> Callable[[], None]:
    """One zloss_efficient training step (forward, backward, opt.step, zero_grad) as a closure."""
    from xclass import components
    from xclass.heads.base import HEADS

    components.load_all()
    cfg = types.SimpleNamespace(name="zloss_efficient", params={"dtype": "float32", "init_std": 0.05,
                                                                "stabilize_period": 0})
    head = HEADS.get("zloss_efficient")(cfg, num_classes=D, embedding_dim=d, ctx=_bench_gpu()._ctx(device), seed=0)
    head = head.to(device)
    opt = head.make_optimizer(types.SimpleNamespace(name="sgd", lr=0.01, momentum=0.0, weight_decay=0.0,
                                                    head_lr=None))
    g = torch.Generator().manual_seed(0)
    H = torch.randn(m, d, generator=g).to(device)
    y = torch.randint(0, D, (m,), generator=g).to(device)

    def step() -> None:
        emb = H.clone().requires_grad_(True)
        head(emb, y).loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def zloss_step(D: int, a, device: torch.device) -> float:
    return _bench_gpu().time_ms(make_zloss_step(D, a.zd, a.zm, device), device, a.warmup, a.steps)


def logsoftmax_step(D: int, a, device: torch.device) -> float:
    W = torch.nn.Parameter(torch.randn(D, a.zd + 1, device=device) * 0.05)
    opt = torch.optim.SGD([W], lr=0.01)
    H = torch.randn(a.zm, a.zd, device=device)
    y = torch.randint(0, D, (a.zm,), device=device)
    ones = torch.ones(a.zm, 1, device=device)

    def step() -> None:
        emb = H.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(torch.cat([emb, ones], 1) @ W.t(), y).backward()
        opt.step()
        opt.zero_grad()

    return _bench_gpu().time_ms(step, device, a.warmup, a.steps)


def bench_zloss(a, device: torch.device) -> List[Dict[str, Any]]:
    rows = []
    for D in a.z_D:
        base = {"bench": "zloss", "D": D, "dtype": "fp32", "r": 1.0, "d": a.zd, "m": a.zm}
        bg = _bench_gpu()
        ls = bg.measured(dict(base, method="logsoftmax"), device, lambda: {"step_ms": logsoftmax_step(D, a, device)})
        zl = bg.measured(dict(base, method="zloss_efficient"), device, lambda: {"step_ms": zloss_step(D, a, device)})
        if ls.get("step_ms") and zl.get("step_ms"):
            zl["speedup"] = ls["step_ms"] / zl["step_ms"]
        bg.emit([ls, zl], a)
        rows += [ls, zl]
    return rows


# ---- --count-ops: what one steady step launches and where it waits for the device ----------
_SCALAR_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy"}
_SIZE_DEPENDENT = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount",
                   "equal", "allclose"}
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
# aten operations that read device memory on the host: seen below the Python API, so they also
# catch reads made inside torch (e.g. torch.linalg.inv's error check on CUDA)
_ATEN_SYNCS = {"_local_scalar_dense", "_linalg_check_errors", "nonzero", "masked_select", "unique_dim",
               "_unique2", "unique_consecutive"}


def _is_bool_index(idx: Any) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


class _HostReads(TorchFunctionMode):
    """Records every tensor operation that synchronises with a GPU, with the xclass function doing it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: List[Tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        kind = ""
        if name in _SCALAR_READS or name in _SIZE_DEPENDENT:
            kind = name
        elif name == "repeat_interleave" and len(args) > 1 and torch.is_tensor(args[1]):
            kind = name
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_bool_index(args[1]):
            kind = name + "[bool mask]"
        elif name == "where" and len(args) == 1 and not kwargs:
            kind = "where(cond)"
        if kind:
            where = next((f"{f.filename.split('xclass/')[-1]}:{f.name}" for f in
                          reversed(traceback.extract_stack()[:-1]) if "/xclass/" in f.filename), "?")
            self.reads.append((kind, where))
        return func(*args, **kwargs)


class _AtenOps(TorchDispatchMode):
    """Counts the aten operations that reach the backend (below autograd)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.syncs: List[str] = []
        self.views = 0
        self.allocs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _ATEN_SYNCS:
            self.syncs.append(name)
        if func.is_view or name in ("detach", "alias", "lift_fresh"):
            self.views += 1
        elif name in _NO_KERNEL:
            self.allocs += 1
        else:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(D: int, d: int, m: int, steps: int, device: torch.device) -> Dict[str, Any]:
    """Op and host-read counts of one steady step (after 2 warm-up steps) and the median CPU time."""
    step = make_zloss_step(D, d, m, device)
    for _ in range(2):
        step()
    reads = _HostReads()
    ops = _AtenOps()
    with reads, ops:
        step()
    t = _bench_gpu().time_ms(step, device, 1, steps)
    return {"bench": "zloss_ops", "D": D, "d": d, "m": m, "device": str(device),
            "ops": sum(ops.ops.values()), "host_reads": len(reads.reads), "aten_syncs": ops.syncs,
            "views": ops.views,
            "allocs": ops.allocs, "cpu_step_ms" if device.type == "cpu" else "step_ms": round(t, 3),
            "reads": [f"{k} in {w}" for k, w in reads.reads], "op_counts": dict(ops.ops.most_common())}


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count-ops", action="store_true", help="print op / host-read counts of one step")
    ap.add_argument("--D", default="100000", help="comma list of class counts")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 gives stable CPU times on a shared machine)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.count_ops:
        ap.error("nothing to do: the timed rows are part of tools/bench_gpu.py; pass --count-ops")
    for D in (int(x) for x in a.D.split(",") if x):
        print(json.dumps(count_ops(D, a.d, a.m, a.steps, torch.device(a.device))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
