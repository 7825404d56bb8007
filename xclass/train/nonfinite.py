"""Non-finite optimizer steps: skipped, and the run stopped after ``train.max_nonfinite_steps``
consecutive ones, so a diverged run never writes a NaN checkpoint.

The test uses the pre-clip global gradient norm of :func:`xclass.train.clip.clip_gradients`
(replicated on every rank, so every rank takes the same branch): a NaN/Inf loss gives
non-finite gradients.

* On the CPU the norm is read on the host (free there): a non-finite step is skipped. Its
  gradients are dropped, the head and a plain encoder are untouched (torch optimizers skip
  parameters without a gradient); a DeepSpeed encoder still takes its own step, which is why no
  checkpoint is written while a streak of skipped steps is open.
* On an accelerator nothing is read in a steady step (docs/devices.md): every gradient is
  multiplied by ``isfinite(norm)`` on the device after NaN/Inf entries are zeroed, so a
  non-finite step becomes a zero-gradient step (the head optimizer skips it on the device as
  well) and the parameters stay finite. The streak is a device counter read on log and
  checkpoint steps, where the run stops once it reaches the limit.
"""
from __future__ import annotations

import math
from typing import Any, List

import torch

from xclass.errors import NonFiniteError  # noqa: F401  (raised here)


def streak(s: Any) -> int:
    """Consecutive non-finite steps so far (0 after a finite step). On an accelerator this reads
    the device counter: call it on log and checkpoint steps only."""
    dev = getattr(s, "nonfinite_streak_dev", None)
    if dev is not None:
        return int(dev)
    return int(getattr(s, "nonfinite_streak", 0))


def _raise(step: int, n: int, limit: int) -> None:
    raise NonFiniteError(
        f"step {step}: loss/gradient not finite for {n} consecutive steps "
        f"(train.max_nonfinite_steps={limit}); stopped without writing a checkpoint. Lower "
        "optim.lr, set optim.grad_clip, or check the data")


def skip_if_nonfinite(s: Any, gnorm: torch.Tensor, step: int, limit: int) -> bool:
    """At an accumulation boundary, after clipping: True when the step must be skipped (its
    gradients were dropped and the encoder's accumulation counter advanced). Raises
    NonFiniteError at the ``limit``-th consecutive skipped step (CPU) or at the first log or
    checkpoint step after the streak reached it (accelerators, see the module docstring)."""
    if torch.is_tensor(gnorm) and gnorm.device.type != "cpu":
        _zero_nonfinite_on_device(s, gnorm)
        return False
    if math.isfinite(float(gnorm)):
        s.nonfinite_streak = 0
        return False
    s.nonfinite_streak = streak(s) + 1
    s.head_opt.zero_grad()
    if not s.uses_deepspeed:
        s.engine.optimizer.zero_grad(set_to_none=True)
    s.engine.step()
    if s.nonfinite_streak >= limit:
        _raise(step + 1, s.nonfinite_streak, limit)
    return True


def check_streak(s: Any, step: int, limit: int) -> None:
    """On a log step (accelerators): stop the run once the device streak reached ``limit``."""
    if getattr(s, "nonfinite_streak_dev", None) is not None and streak(s) >= limit:
        _raise(step, streak(s), limit)


def _grads(s: Any) -> List[torch.Tensor]:
    params = [*s.engine.module.parameters(), *s.head.parameters()]
    active = getattr(s.head, "active", None)  # Partial FC: the sampled rows are the autograd leaf
    if active is not None:
        params.append(active[1])
    return [p.grad for p in params if p.grad is not None]


def _zero_nonfinite_on_device(s: Any, gnorm: torch.Tensor) -> None:
    """Every gradient times isfinite(gnorm), NaN/Inf entries zeroed first (NaN * 0 is NaN);
    the device streak counter advances or resets. No host read."""
    finite = torch.isfinite(gnorm)
    grads = _grads(s)
    for g in grads:
        g = g._values() if g.is_sparse else g  # a sparse embedding-table gradient: its stored rows
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        g.mul_(finite.to(g.dtype))
    prev = getattr(s, "nonfinite_streak_dev", None)
    if prev is None:
        prev = torch.zeros((), dtype=torch.int64, device=gnorm.device)
    s.nonfinite_streak_dev = torch.where(finite, torch.zeros_like(prev), prev + 1)


def check_finite_params(s: Any, step: int, group: Any) -> None:
    """Before a checkpoint: every encoder and head parameter finite on every rank, else
    NonFiniteError (an update can overflow even when its gradient was finite). One host read."""
    from xclass.parallel.collectives import all_reduce

    params = [p.detach() for p in [*s.engine.module.parameters(), *s.head.parameters()] if p.is_floating_point()]
    dev = params[0].device if params else torch.device("cpu")
    ok = torch.stack([torch.isfinite(p).all() for p in params]).all() if params else torch.ones((), dtype=torch.bool,
                                                                                                   device=dev)
    flag = all_reduce((~ok).to(torch.float32).reshape(1), "max", group)
    if float(flag.item()) > 0:
        raise NonFiniteError(f"step {step}: model parameters are not finite (the run diverged); checkpoint "
                             "not written. Lower optim.lr or set optim.grad_clip")
