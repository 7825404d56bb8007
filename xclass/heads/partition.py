"""Class partition over ranks (uneven splits allowed) and global -> local label mapping.

Rank ``r`` of ``W`` owns the contiguous global class ids ``[start, stop)``; the first
``C % W`` ranks own one class more (insightface's split, so no padding is ever needed).
"""
from __future__ import annotations

from typing import Tuple

import torch


def class_range(num_classes: int, rank: int, world: int) -> Tuple[int, int]:
    """(start, stop) of the global class ids owned by ``rank`` (uneven split)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"class_range: bad rank {rank} for world size {world}")
    if num_classes < world:
        raise ValueError(f"class_range: num_classes={num_classes} < world size {world}; "
                         "every rank must own at least one class")
    base, extra = divmod(num_classes, world)
    start = base * rank + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def to_local(labels: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """labels [B] global ids (IGNORE_INDEX allowed) -> [B] local column in [0, stop-start) or -1
    when the class lives on another rank or the row is ignored."""
    inside = (labels >= start) & (labels < stop)
    return torch.where(inside, labels - start, torch.full_like(labels, -1))
