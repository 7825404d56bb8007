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


MIN_STEPS_PER_EPOCH = 10


def schedule_warning(steps_per_epoch: int, total: int, warmup: int, batch_size: int = 0,
                     train_rows: int = 0, max_steps: int = 0) -> str:
    """One line warning about a schedule the data cannot support, or "" when it is fine:
    fewer than :data:`MIN_STEPS_PER_EPOCH` optimizer steps per epoch when epochs decide the
    length (``max_steps`` 0; a batch too large for the set), or a warm-up of at least all the
    steps (the LR never leaves warm-up)."""
    msgs = []
    if not max_steps and steps_per_epoch < MIN_STEPS_PER_EPOCH:
        why = [f"{train_rows} training rows"] * bool(train_rows) + [f"global batch {batch_size}"] * bool(batch_size)
        why_s = f" ({', '.join(why)})" if why else ""
        msgs.append(f"only {steps_per_epoch} optimizer step(s) per epoch{why_s}: lower "
                    f"data.batch_size or raise train.epochs")
    if warmup > 0 and warmup >= total:
        msgs.append(f"optim.warmup_steps {warmup} >= {total} total steps: the run never leaves warm-up")
    return ("warning: " + "; ".join(msgs)) if msgs else ""
