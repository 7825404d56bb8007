"""Load head shards saved at one world size into a head built at another.

Class ``c`` lives on exactly one shard in both layouts (``manifest["shard_ranges"]``), so the
new rank reads only the saved shards that overlap its range ``[start, stop)`` (memory stays
bounded by what the rank will hold) and concatenates their rows.

Which tensors are per-class rows is taken from the *new* head's own state: a tensor whose
first dimension is ``m * C_local`` (``m`` rows per class, e.g. K sub-centres) is row-sharded;
the rest (bias, step counters) is replicated and taken from the first overlapping shard.
Optimizer state entries are row-sharded when their first dimension is ``m * C_shard`` of the
shard they come from. Heads whose state is not row-separable (a per-rank factorisation)
implement ``merge_shards(pieces) -> state`` themselves, where ``pieces`` is a list of
``(start, stop, shard_state)`` and the result is this rank's ``{"head", "optimizer"}``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from xclass.train import checkpoint as ckpt

Piece = Tuple[int, int, Dict[str, Any]]


def _rows(t: torch.Tensor, n_classes: int) -> int:
    """Rows per class of ``t`` on a shard of ``n_classes``, or 0 when not row-sharded."""
    if t.dim() == 0 or n_classes <= 0 or t.shape[0] % n_classes:
        return 0
    return t.shape[0] // n_classes


def _cut(t: torch.Tensor, a: int, b: int, lo: int, hi: int, m: int) -> torch.Tensor:
    """Rows of classes [lo, hi) from a tensor holding classes [a, b) with m rows each."""
    return t[(lo - a) * m : (hi - a) * m]


def merge_tree(pieces: List[Piece], start: int, stop: int, target: Any = None) -> Any:
    """Merge nested dicts of tensors from ``pieces`` into the state of classes [start, stop).

    ``target`` (the new rank's freshly built state, when known) decides which leaves are
    row-sharded; without it a leaf is row-sharded when its first dimension is a multiple of
    every piece's class count with the same multiplier.
    """
    first = pieces[0][2]
    if isinstance(first, dict):
        return {k: merge_tree([(a, b, s[k]) for a, b, s in pieces], start, stop,
                              target.get(k) if isinstance(target, dict) else None)
                for k in first}
    if not torch.is_tensor(first):
        return first
    n_new = stop - start
    if torch.is_tensor(target):
        m = _rows(target, n_new)
        if target.dim() and target.shape[0] == 1 and n_new != 1:
            m = 0  # a [1] tensor (bias) on a multi-class shard is replicated
        if not m or any(_rows(s, b - a) != m for a, b, s in pieces):
            return first.clone()
    else:
        ms = {_rows(s, b - a) for a, b, s in pieces}
        if len(ms) != 1 or 0 in ms or first.dim() == 0 or first.numel() == 1 and n_new != 1:
            return first.clone()
        m = ms.pop()
    parts = [_cut(s, a, b, max(a, start), min(b, stop), m) for a, b, s in pieces]
    return torch.cat(parts, 0).clone()


def load_resharded(setup: Any, path: str, manifest: Dict[str, Any], ctx: Any) -> None:
    """Fill ``setup.head`` and ``setup.head_opt`` of this rank from a checkpoint saved at
    ``manifest['world_size']`` ranks."""
    ranges = manifest.get("shard_ranges")
    if not ranges or len(ranges) != int(manifest["world_size"]):
        raise ckpt.CheckpointError(f"{path}: manifest has no usable shard_ranges; cannot reshard")
    ends = [0] + [b for _, b in ranges]
    if [a for a, _ in ranges] != ends[:-1] or ends[-1] != int(manifest["num_classes"]):
        raise ckpt.CheckpointError(f"{path}: shard_ranges {ranges} do not cover classes "
                                   f"[0, {manifest['num_classes']}) contiguously")
    start, stop = setup.shard_ranges[ctx.rank]
    pieces = [(a, b, ckpt.load_head_state(path, i)) for i, (a, b) in enumerate(ranges)
              if a < stop and b > start]
    if not pieces:  # a rank with no classes still needs the replicated values
        pieces = [(ranges[0][0], ranges[0][1], ckpt.load_head_state(path, 0))]
    head = setup.head
    if hasattr(head, "merge_shards"):
        state = head.merge_shards(pieces)
    else:
        state = {
            "head": merge_tree([(a, b, p["head"]) for a, b, p in pieces], start, stop,
                               head.state_dict()),
            "optimizer": merge_tree([(a, b, p["optimizer"]) for a, b, p in pieces], start, stop),
        }
    head.load_state_dict(state["head"])
    setup.head_opt.load_state_dict(state["optimizer"])
    ckpt.restore_rng(pieces[0][2], getattr(setup, "device", "cpu"))
