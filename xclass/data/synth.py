"""Stateless randomness for the synthetic generators.

Class-level parameters (a face's blobs, a speaker's formants, a domain's packet template,
a label's vocabulary) are *hashed* from ``(seed, class_id, j)`` instead of drawn from a
sequential RNG and stored: a chunk of rows computes the parameters of exactly the classes
it needs, so memory never scales with ``num_classes * params`` and any chunk can be
generated independently (hence reproducibly) from its index.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic is the point)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> _U64(30))) * _M1
        x = (x ^ (x >> _U64(27))) * _M2
        return x ^ (x >> _U64(31))


def hash_u64(seed: int, *keys) -> np.ndarray:
    """Hash integer keys (broadcast together) with ``seed`` into uint64 values."""
    h = _mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=_U64))
    for k in keys:
        h = _mix64(h ^ np.asarray(k, dtype=np.int64).astype(_U64))
    return h


def hash_uniform(seed: int, *keys) -> np.ndarray:
    """Uniform floats in [0, 1), float64, shape = broadcast shape of ``keys``."""
    return (hash_u64(seed, *keys) >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


class AffinePerm:
    """A bijection of ``[0, n)``: ``i -> (a*i + b) mod n`` with ``gcd(a, n) = 1``.

    Used to interleave classes in the written row order without a stored permutation
    (row ``i`` of a split with ``r`` rows per class has class ``perm(i) // r``), and its
    inverse finds the row of (class, instance) for pairs and trials.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise ValueError(f"AffinePerm needs n > 0, got {n}")
        self.n = n
        a = int(hash_u64(seed, 17)[0] % _U64(max(n, 2))) | 1
        # ~n/phi spreads consecutive rows far apart; walk to the next unit mod n.
        a = (a + int(n * 0.6180339887)) % n if n > 2 else 1
        while math.gcd(a, n) != 1:
            a = (a + 1) % n
        self.a = a
        self.b = int(hash_u64(seed, 29)[0] % _U64(n))
        self.a_inv = pow(a, -1, n) if n > 1 else 0

    def __call__(self, i: np.ndarray) -> np.ndarray:
        i = np.asarray(i, dtype=np.int64)
        return (i * self.a + self.b) % self.n  # a, i < 2**31 for n <= 2**31: no overflow

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.int64)
        return ((y - self.b) % self.n * self.a_inv) % self.n


class Zipf:
    """Sample ranks ``r in [0, n)`` with ``P(r) ~ (r + 1) ** -alpha`` by inverse CDF.

    Holds one float64 CDF of length ``n`` (8 MB for 10^6 labels): bounded by the label
    count, never by rows.
    """

    def __init__(self, n: int, alpha: float) -> None:
        w = np.arange(1, n + 1, dtype=np.float64) ** (-alpha)
        self.cdf = np.cumsum(w)
        self.cdf /= self.cdf[-1]

    def sample(self, rng: np.random.Generator, size) -> np.ndarray:
        idx = np.searchsorted(self.cdf, rng.random(size), side="right")
        return np.minimum(idx, len(self.cdf) - 1).astype(np.int64)


def chunk_ranges(n: int, chunk: int) -> Tuple[Tuple[int, int], ...]:
    """Split ``[0, n)`` into consecutive ``[lo, hi)`` ranges of at most ``chunk`` rows."""
    return tuple((lo, min(lo + chunk, n)) for lo in range(0, n, chunk))


def chunk_rng(seed: int, split: int, chunk_index: int) -> np.random.Generator:
    """Per-chunk generator for intra-class noise: independent of chunk processing order."""
    return np.random.default_rng([seed & 0xFFFFFFFF, split, chunk_index])
