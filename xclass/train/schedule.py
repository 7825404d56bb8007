"""Learning-rate schedules as pure functions of the step."""
from __future__ import annotations

import math


def lr_at(step: int, total: int, peak: float, schedule: str = "cosine", warmup: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up from peak/warmup to peak over ``warmup`` steps, then constant, cosine
    or linear decay to 0 at ``total``.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return peak * (1.0 - frac)
    raise ValueError(f"unknown optim.schedule {schedule!r} (constant, cosine, linear)")
