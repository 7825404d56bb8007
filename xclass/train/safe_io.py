"""Loading checkpoint files without running code from them.

Every ``.pt`` file xclass reads (encoder.pt, head shards, DeepSpeed model and optimizer
states) goes through :func:`safe_load`: ``torch.load(weights_only=True)``, whose restricted
unpickler rebuilds tensors, dicts, lists, tuples, sets and numbers only, plus the few plain
DeepSpeed data classes its ZeRO optimizer state holds (:data:`DEEPSPEED_GLOBALS`). A file
that names any other global (a ``__reduce__`` payload calling ``os.system``, ...) is refused
with a :class:`~xclass.train.checkpoint.CheckpointError` naming the file; nothing in it runs.
A truncated or corrupt file is refused the same way.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any, Iterator, List

import torch


class UnsafeCheckpointError(RuntimeError):
    """Raised through CheckpointError; kept separate so tests can tell refusal from corruption."""


def _deepspeed_globals() -> List[Any]:
    """Plain-data classes found in DeepSpeed ZeRO optimizer states (enums, a dataclass, the
    loss-scaler's attribute bag); none of them runs code when rebuilt."""
    out: List[Any] = []
    for mod, name in (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                      ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                      ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                      ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            out.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return out


def safe_load(path: str, map_location: Any = "cpu", deepspeed: bool = False) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``deepspeed=True`` also
    allows :func:`_deepspeed_globals`). Raises CheckpointError naming ``path`` when the file
    is missing, truncated, corrupt or holds anything else."""
    from xclass.train.checkpoint import CheckpointError

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file is missing")
    allowed = _deepspeed_globals() if deepspeed else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than "
                              f"tensors and plain data ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint file (truncated or corrupt?): "
                              f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("Weights only load failed", "(1)", "(2)", "In PyTorch")):
            return line[:200]
    return type(exc).__name__


@contextlib.contextmanager
def safe_deepspeed_loads(engine: Any) -> Iterator[None]:
    """Inside the block, the DeepSpeed engine's checkpoint engine reads files with
    :func:`safe_load` (DeepSpeed's own loader unpickles with ``weights_only=False``)."""
    ce = engine.checkpoint_engine
    original = ce.load

    def load(path: str, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        return safe_load(path, map_location=map_location, deepspeed=True)

    ce.load = load
    try:
        yield
    finally:
        ce.load = original
