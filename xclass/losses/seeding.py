"""Exact integer key mixing for seeds: (seed, step, id, ...) -> one 63-bit generator seed."""
from __future__ import annotations

_M64 = (1 << 64) - 1


def mix_key(*parts: int) -> int:
    """Combine integers into one 63-bit key (python ints, exact); used for seeds."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        h ^= h >> 31
    return h & ((1 << 63) - 1)
