"""Partial-FC negative-class sampling keyed by *global* class id.

Class ``c`` is kept at step ``t`` when ``u(seed, t, c) < rate`` or when ``c`` is a positive of
the global batch. ``u`` is a counter-based hash (splitmix64 finaliser), so the sampled global
set is the same for every world size and every split: head state never depends on W.
The sample size is Binomial(C, rate) + positives rather than a fixed per-rank count (a fixed
per-rank count is what makes insightface's sample depend on W).
"""
from __future__ import annotations

import torch

from xclass.losses.seeding import mix_key

_M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _M64
    return x - (1 << 64) if x >= (1 << 63) else x


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def class_uniforms(global_ids: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """global_ids [n] int64 -> [n] float64 uniforms in [0, 1), a pure function of (seed, step, id)."""
    x = global_ids.to(torch.int64) + _signed(mix_key(seed, step) * 0x9E3779B97F4A7C15)
    x = (x ^ _srl(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _srl(x, 27)) * _signed(0x94D049BB133111EB)
    x = x ^ _srl(x, 31)
    return _srl(x, 11).to(torch.float64) * (1.0 / (1 << 53))


def sample_classes(start: int, stop: int, target: torch.Tensor, rate: float, seed: int,
                   step: int) -> torch.Tensor:
    """Local class ids (sorted, int64) kept on the rank owning ``[start, stop)``.

    target: [B_global] local column or -1 (replicated); its columns are always kept.
    """
    n = stop - start
    dev = target.device
    if rate >= 1.0:
        return torch.arange(n, device=dev)
    keep = class_uniforms(torch.arange(start, stop, device=dev), seed, step) < rate
    # positives kept without boolean-mask indexing (a host sync): amax-scatter of "is a positive"
    is_pos = (target >= 0).to(torch.uint8)
    keep = keep.to(torch.uint8).scatter_reduce_(0, target.clamp(min=0), is_pos, "amax")
    # the one unavoidable host sync of Partial FC: the sample size is data dependent
    return keep.nonzero().squeeze(1)
