"""Process-level CPU performance settings applied by the entry points (CLI, Ray workers, torchrun).

glibc's malloc serves every block above 32 MiB with a fresh ``mmap`` and unmaps it on free, so a
training step that allocates its [B, C_local] logits, the normalised class rows and their
gradients (tens to hundreds of MiB each) page-faults and zero-fills all of them again on every
step: a fresh 100 MiB tensor costs ~30 ms here against ~3 ms for the same pass in place. The
usual cure is jemalloc/tcmalloc through LD_PRELOAD; without extra packages, ``mallopt`` can keep
large blocks on the heap (``M_MMAP_MAX = 0``) and stop it from being trimmed on every free
(``M_TRIM_THRESHOLD``), so freed blocks are reused from one step to the next.

Opt out with ``XCLASS_MALLOC=system``; nothing is changed when another allocator is preloaded,
off Linux, or without glibc. Library code never calls this: only process entry points do.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc malloc.h
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap top for reuse instead of returning it
_applied = False


def tune_malloc() -> bool:
    """Keep large allocations on the reusable heap (see the module docstring); idempotent.
    Returns True when the setting is (already) in effect in this process."""
    global _applied
    if _applied:
        return True
    if os.environ.get("XCLASS_MALLOC", "heap") == "system" or not sys.platform.startswith("linux"):
        return False
    if any(a in os.environ.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    _applied = ok  # this process only: workers call it in their own entry point
    return ok
