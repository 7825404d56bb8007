"""Non-finite optimizer steps: skipped, and the run stopped after ``train.max_nonfinite_steps``
consecutive ones, so a diverged run never writes a NaN checkpoint.

The test uses the pre-clip global gradient norm that :func:`xclass.train.clip.clip_gradients`
already brings to the host (replicated on every rank, so every rank takes the same branch):
a NaN/Inf loss gives non-finite gradients, and no extra device synchronisation is added.
A skipped step leaves the head and a plain encoder untouched (their gradients are dropped and
torch optimizers skip parameters without a gradient); a DeepSpeed encoder still takes its own
step, which is why no checkpoint is written while a streak of skipped steps is open.
"""
from __future__ import annotations

import math
from typing import Any


class NonFiniteError(RuntimeError):
    """The run diverged (loss or gradients NaN/Inf for too many consecutive steps)."""


def streak(s: Any) -> int:
    """Consecutive non-finite steps so far (0 after a finite step)."""
    return int(getattr(s, "nonfinite_streak", 0))


def skip_if_nonfinite(s: Any, gnorm: Any, step: int, limit: int) -> bool:
    """At an accumulation boundary, after clipping: True when the step must be skipped (its
    gradients were dropped and the encoder's accumulation counter advanced). Raises
    NonFiniteError at the ``limit``-th consecutive skipped step."""
    if math.isfinite(float(gnorm)):
        s.nonfinite_streak = 0
        return False
    s.nonfinite_streak = streak(s) + 1
    s.head_opt.zero_grad()
    if not s.uses_deepspeed:
        s.engine.optimizer.zero_grad(set_to_none=True)
    s.engine.step()
    if s.nonfinite_streak >= limit:
        raise NonFiniteError(
            f"step {step + 1}: loss/gradient not finite for {s.nonfinite_streak} consecutive steps "
            f"(train.max_nonfinite_steps={limit}); stopped without writing a checkpoint. Lower "
            "optim.lr, set optim.grad_clip, or check the data")
    return True


def check_finite_params(s: Any, step: int, group: Any) -> None:
    """Before a checkpoint: every encoder and head parameter finite on every rank, else
    NonFiniteError (an update can overflow even when its gradient was finite)."""
    import torch

    from xclass.parallel.collectives import all_reduce

    params = [*s.engine.module.parameters(), *s.head.parameters()]
    bad = any(p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()) for p in params)
    flag = all_reduce(torch.tensor([1.0 if bad else 0.0]), "max", group)
    if float(flag.item()) > 0:
        raise NonFiniteError(f"step {step}: model parameters are not finite (the run diverged); checkpoint "
                             "not written. Lower optim.lr or set optim.grad_clip")
