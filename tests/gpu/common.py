"""Shared pieces of the GPU tests (marker ``gpu``).

Device under test: ``cuda:0`` when CUDA is available, else every test skips. The environment
variable ``XCLASS_GPU_TEST_DEVICE`` overrides it (e.g. ``XCLASS_GPU_TEST_DEVICE=cpu``): the
"GPU" side then runs on that device, so the tests themselves can be checked on a machine
without a GPU (CPU against CPU must of course agree).

Tolerances, relative (max |x - ref| / max |ref|): fp32 heads ``REL32`` = 1e-4, float64 heads
``REL64`` = 1e-9. Both sides run the same fp32 math with TF32 off; what differs is the order of
reductions in the GPU kernels (measured differences on an H200 were <= 4e-6).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, List, Tuple

import pytest
import torch

from xclass.parallel import ParallelContext

ENV = "XCLASS_GPU_TEST_DEVICE"
REL32, REL64 = 1e-4, 1e-9


def test_device() -> torch.device:
    """The device under test, or skip (no CUDA and no override)."""
    name = os.environ.get(ENV)
    if name:
        return torch.device(name)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (set XCLASS_GPU_TEST_DEVICE=cpu to run these tests on the CPU)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", 0)


test_device.__test__ = False  # a helper, not a test


def device_ctx(device: torch.device, **kw: Any) -> ParallelContext:
    """A ParallelContext that owns ``device`` (single process unless ``kw`` says otherwise)."""
    if "device" in {f.name for f in dataclasses.fields(ParallelContext)}:
        return ParallelContext(device=device, **kw)
    if device.type != "cpu":
        pytest.skip("this ParallelContext carries no device")
    return ParallelContext(**kw)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if ref.numel() == 0:
        return 0.0
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def float_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Every floating tensor of ``module.state_dict()``, on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point()}


def run_head(make: Callable[[ParallelContext], Any], batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
             optim: Any, device: torch.device) -> Dict[str, Any]:
    """Build a head on ``device`` and take one optimizer step per batch.
    Returns per-step losses and dL/demb, and the head's floating state after the last step."""
    torch.manual_seed(0)
    head = make(device_ctx(device)).to(device)
    opt = head.make_optimizer(optim)
    losses: List[torch.Tensor] = []
    grads: List[torch.Tensor] = []
    for emb, labels in batches:
        e = emb.to(device).clone().requires_grad_(True)
        out = head(e, labels.to(device))
        assert out.loss.device.type == device.type
        out.loss.backward()
        losses.append(out.loss.detach().cpu())
        grads.append(e.grad.detach().cpu())
        opt.step()
        opt.zero_grad()
    return {"loss": torch.stack(losses), "emb_grad": grads, "state": float_state(head)}


def assert_same_run(got: Dict[str, Any], ref: Dict[str, Any], tol: float) -> None:
    """Losses, dL/demb of every step and every floating state tensor after the steps agree."""
    assert rel(got["loss"], ref["loss"]) <= tol, (got["loss"], ref["loss"])
    for step, (g, r) in enumerate(zip(got["emb_grad"], ref["emb_grad"])):
        assert rel(g, r) <= tol, f"dL/demb step {step}: rel {rel(g, r):.2e}"
    assert got["state"].keys() == ref["state"].keys()
    for k, r in ref["state"].items():
        assert rel(got["state"][k], r) <= tol, f"{k} after the steps: rel {rel(got['state'][k], r):.2e}"
