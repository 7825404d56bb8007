"""Checkpoints: encoder state, one head shard per rank, and a manifest.

Layout (``run/checkpoints/step_00000100/``)::

    manifest.json        step, epoch, world_size, num_classes, embedding_dim, shard ranges,
                         config digest, data position; written last by rank 0
    encoder.pt           plain engine state (rank 0), or deepspeed/ (every rank writes its part)
    head-r00000.pt       rank r's head module state + head optimizer state + RNG state (the CPU
                         generator's, and the rank's CUDA device's when it trains on one)

Writes go to ``step_XXXXXXXX.tmp/`` and are renamed when every rank has finished, so an
interrupted write never replaces the previous checkpoint. Only the last ``keep`` are kept.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from xclass.data.meta import read_json_object
from xclass.parallel import ParallelContext
from xclass.parallel.collectives import barrier, broadcast_object
from xclass.errors import CheckpointError  # noqa: F401  (raised here; defined with the other user errors)

MANIFEST = "manifest.json"


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint write that failed (disk full, I/O error); still an OSError for callers."""


def ckpt_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def list_checkpoints(run_dir: str) -> List[str]:
    """Complete checkpoints (with a manifest), oldest first."""
    root = ckpt_root(run_dir)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root)
                   if n.startswith("step_") and not n.endswith(".tmp")
                   and os.path.exists(os.path.join(root, n, MANIFEST)))
    return [os.path.join(root, n) for n in names]


def latest_checkpoint(run_dir: str) -> Optional[str]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def head_file(path: str, rank: int) -> str:
    return os.path.join(path, f"head-r{rank:05d}.pt")


def _atomic_torch_save(obj: Any, path: str) -> None:
    tmp = path + ".part"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: str, step: int, ctx: ParallelContext, manifest: Dict[str, Any],
                    head_state: Dict[str, Any], encoder_save: Callable[[str], None],
                    keep: int = 2) -> str:
    """Write one checkpoint from every rank; returns its final path.

    ``encoder_save(tmp_dir)`` writes the encoder (rank 0 only for plain engines; all ranks
    for DeepSpeed). ``head_state`` is this rank's head shard state.
    """
    final = os.path.join(ckpt_root(run_dir), f"step_{step:08d}")
    tmp = final + ".tmp"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(ctx.group)
    with _write_errors(tmp):
        _atomic_torch_save(head_state, head_file(tmp, ctx.rank))
        encoder_save(tmp)
    barrier(ctx.group)
    if ctx.is_main:
        with _write_errors(tmp):
            with open(os.path.join(tmp, MANIFEST + ".part"), "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
            os.replace(os.path.join(tmp, MANIFEST + ".part"), os.path.join(tmp, MANIFEST))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier(ctx.group)
    return final


@contextlib.contextmanager
def _write_errors(tmp: str) -> Iterator[None]:
    """A failed checkpoint write: the half-written directory removed, one line naming it
    (and "no space left on device" when the disk is full; torch's own message hides that)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _disk_full(os.path.dirname(tmp))
        why = "no space left on device" if full else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointWriteError(f"{tmp}: checkpoint not written: {why}; the previous checkpoint is intact") from None


def _disk_full(path: str, min_free: int = 1 << 20) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < min_free


def read_manifest(path: str) -> Dict[str, Any]:
    mp = os.path.join(path, MANIFEST)
    try:
        return read_json_object(mp, lambda why: CheckpointError(f"{mp}: corrupt manifest: {why}"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST}; not a complete checkpoint") from None


def check_compatible(path: str, manifest: Dict[str, Any], expect: Dict[str, Any]) -> None:
    """Refuse a checkpoint whose shape-defining fields differ from this run's."""
    for key in ("num_classes", "embedding_dim", "head", "encoder"):
        if key in expect and manifest.get(key) != expect[key]:
            raise CheckpointError(
                f"{os.path.join(path, MANIFEST)}: checkpoint has {key}={manifest.get(key)!r} but "
                f"this run's config has {key}={expect[key]!r}; use a new train.out_dir or fix the config")


def find_resume(run_dir: str, ctx: ParallelContext) -> Optional[str]:
    """The newest complete checkpoint, agreed by all ranks (rank 0 decides)."""
    path = latest_checkpoint(run_dir) if ctx.is_main else None
    return broadcast_object(path, 0, ctx.group)


def load_head_state(path: str, rank: int, map_location: Any = "cpu") -> Dict[str, Any]:
    """Rank ``rank``'s head shard state, its tensors on ``map_location`` (the run's device when
    resuming; the CPU when resharding, which assembles rows from several shards)."""
    f = head_file(path, rank)
    if not os.path.exists(f):
        raise CheckpointError(f"{f}: missing head shard for rank {rank}")
    from xclass.train.safe_io import safe_load

    return safe_load(f, map_location=map_location)


def rng_state(device: Any) -> Dict[str, torch.Tensor]:
    """The random state a checkpoint keeps: the CPU generator's (``rng``) and, on a CUDA run,
    that device's generator's (``cuda_rng``)."""
    out = {"rng": torch.get_rng_state()}
    dev = torch.device(device)
    if dev.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(dev)
    return out


def restore_rng(state: Dict[str, Any], device: Any) -> None:
    """Put back what :func:`rng_state` saved. A CUDA state is restored only on a CUDA run (a GPU
    checkpoint resumes on the CPU and vice versa; the missing generator keeps its seed)."""
    torch.set_rng_state(state["rng"].cpu())
    dev = torch.device(device)
    if dev.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), dev)


def encoder_weights(path: str) -> Dict[str, torch.Tensor]:
    """The encoder state dict of checkpoint directory ``path`` (read without unpickling code)."""
    from xclass.train.safe_io import safe_load

    f = os.path.join(path, "encoder.pt")
    state = safe_load(f, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise CheckpointError(f"{f}: not an encoder checkpoint (no 'module' state)")
    return state["module"]


def init_encoder(encoder: torch.nn.Module, run_dir: str) -> str:
    """``train.init_from``: load the encoder weights of ``run_dir``'s newest checkpoint into
    ``encoder`` (same architecture; the head, optimizer and schedule start fresh). Returns the
    checkpoint directory; a run without one, or weights that do not fit, stop in one line."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"train.init_from={run_dir}: no complete checkpoint under checkpoints/")
    read_manifest(found[-1])
    try:
        encoder.load_state_dict(encoder_weights(found[-1]))
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"train.init_from: {os.path.join(found[-1], 'encoder.pt')} does not fit this "
                              f"run's encoder: {str(exc).splitlines()[0]}") from None
    return found[-1]
