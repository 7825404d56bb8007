"""Builds what the loop needs from a config: data reader, decoder, encoder engine, head,
head optimizer; restores them from the newest checkpoint."""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

from xclass import components
from xclass.config import RunConfig
from xclass.config_types import ConfigError
from xclass.data.meta import load_meta, split_files  # noqa: F401  (re-exported for callers of train.setup)
from xclass.data.preflight import check_enough_rows, check_training_files
from xclass.data.schema import DataError
from xclass.parallel import ParallelContext
from xclass.heads.base import HEADS, head_lr, set_lr
from xclass.heads.partition import class_range
from xclass.train import checkpoint as ckpt
from xclass.data.augment import make_augment
from xclass.train.engine import build_engine
from xclass.train.report import get_logger
from xclass.train.schedule import schedule_warning


@dataclass
class Setup:
    """What the loop uses. ``device``: the run's device (``ctx.device``), where the encoder, the
    head, every optimizer state and every decoded batch live."""

    reader: Any
    decode: Callable[[Dict[str, Any]], Tuple[Dict[str, torch.Tensor], torch.Tensor]]
    engine: Any
    head: Any
    head_opt: Any
    num_classes: int
    total_steps: int
    shard_ranges: List[List[int]]
    head_peak_lr: float
    uses_deepspeed: bool
    device: torch.device = torch.device("cpu")
    augment: Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]] = lambda inputs: inputs

    def set_head_lr(self, lr: float) -> None:
        set_lr(self.head_opt, lr)

    @property
    def head_opt_updates_in_backward(self) -> bool:
        """The head applies its optimizer step in its backward (head.params.update_in_backward)."""
        return bool(getattr(self.head_opt, "updates_in_backward", False))


def meta_num_classes(cfg: RunConfig, meta: Dict[str, Any], data_path: str) -> int:
    """data.num_classes, else meta.json's num_classes (a positive integer)."""
    if cfg.data.num_classes:
        return int(cfg.data.num_classes)
    n = meta.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"num_classes is {n!r}; expected a positive integer (or set data.num_classes)",
                        file=os.path.join(data_path, "meta.json"))
    return n


def build_setup(cfg: RunConfig, ctx: ParallelContext) -> Setup:
    """Everything the loop uses, built identically on every rank (same seeds)."""
    components.load_all()
    meta = load_meta(cfg.data.path)
    num_classes = meta_num_classes(cfg, meta, cfg.data.path)
    torch.manual_seed(cfg.train.seed)
    # built on the host (the same seeded values on every device), then moved once, before any
    # optimizer exists: optimizer states are created from the moved parameters
    encoder = components.build_encoder(cfg.model, meta)
    if cfg.train.init_from:  # fine-tuning: another run's encoder weights (a resume overwrites them later)
        ckpt.init_encoder(encoder, cfg.train.init_from)
    encoder = encoder.to(ctx.device)
    head = make_head(cfg, num_classes, cfg.model.embedding_dim, ctx).to(ctx.device)
    engine = build_engine(encoder, cfg, ctx)
    try:
        head_opt = head.make_optimizer(cfg.optim)
    except ValueError as exc:  # e.g. a sharded head's own optimizer supports sgd and adamw only
        raise ConfigError(f"optim.name={cfg.optim.name!r} with head.name={cfg.head.name!r}: {exc}") from None
    check_run = getattr(head, "check_run", None)  # settings a head refuses (e.g. update_in_backward)
    if check_run is not None:
        check_run(cfg)
    files = split_files(cfg.data.path, "train")
    rows = _preflight(cfg, meta, num_classes, files, ctx)
    reader = components.make_reader(files, cfg, meta, ctx)
    check_enough_rows(reader, files, cfg.data.batch_size, cfg.train.grad_accum, ctx.world_size, rows)
    ga = max(1, cfg.train.grad_accum)
    per_epoch = max(1, reader.batches_per_epoch() // ga)
    total = cfg.train.max_steps or cfg.train.epochs * per_epoch
    warn = schedule_warning(per_epoch, total, cfg.optim.warmup_steps, cfg.data.batch_size * ga,
                            int(getattr(reader, "num_rows", 0)), cfg.train.max_steps)
    if warn and ctx.is_main:
        get_logger(ctx).warning(warn)
    decode = components.make_decoder(cfg.data.task, meta, cfg.model)
    if cfg.data.crop_frames:  # speaker: random windows of long utterances, per (seed, epoch, row)
        from xclass.data.crop import RandomCrop

        decode = RandomCrop(decode, cfg.data.crop_frames, cfg.data.seed)
    ranges = _shard_ranges(num_classes, ctx)
    return Setup(reader, decode, engine, head, head_opt, num_classes, total, ranges,
                 head_lr(cfg.optim), bool(cfg.deepspeed.enabled), ctx.device, make_augment(cfg.data))


def _preflight(cfg: RunConfig, meta: Dict[str, Any], num_classes: int, files: List[str],
               ctx: ParallelContext) -> Any:
    """One validation pass over the training files on rank 0 (data.validate); every rank raises
    the same one-line DataError. Returns the row count (None when not validated)."""
    if not cfg.data.validate:
        return None
    from xclass.parallel.collectives import broadcast_object

    result: Any = None
    if ctx.is_main:
        try:
            result = check_training_files(files, cfg.data.task, num_classes, meta)["num_rows"]
        except DataError as exc:
            result = exc
    result = broadcast_object(str(result) if isinstance(result, DataError) else result, 0, ctx.group)
    if isinstance(result, str):
        err = DataError(result)
        err.args = (result,)
        raise err
    return result


def make_head(cfg: RunConfig, num_classes: int, embedding_dim: int, ctx: ParallelContext) -> Any:
    """The configured head; factories with a ``data_path`` keyword also get the dataset
    directory (e.g. to read label text)."""
    factory = HEADS.get(cfg.head.name)
    extra: Dict[str, Any] = {}
    if "data_path" in inspect.signature(factory).parameters:
        extra["data_path"] = cfg.data.path
    try:
        return factory(cfg.head, num_classes=num_classes, embedding_dim=embedding_dim, ctx=ctx,
                       seed=cfg.train.seed, **extra)
    except ValueError as exc:  # a head that cannot take these settings (e.g. its optimizer kinds)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"head.name={cfg.head.name!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def _shard_ranges(num_classes: int, ctx: ParallelContext) -> List[List[int]]:
    """Every rank's class range [start, stop) (the partition all heads use), replicated."""
    return [list(class_range(num_classes, r, ctx.world_size)) for r in range(ctx.world_size)]


def head_memory_mb(s: Setup) -> float:
    """This rank's head parameters + optimizer state, in MiB."""
    # parameters and buffers, not state_dict(): a head may do work there (the factored Z-loss
    # head resynchronises Q and w_bar on save), which must stay off the logging path
    n = sum(t.numel() * t.element_size() for t in [*s.head.parameters(), *s.head.buffers()])
    st = s.head_opt.state_dict().get("state", {})
    for v in (st.values() if isinstance(st, dict) else []):
        if isinstance(v, dict):
            n += sum(t.numel() * t.element_size() for t in v.values() if torch.is_tensor(t))
    return n / 2**20


def encoder_state(s: Setup, ctx: ParallelContext, directory: str) -> None:
    """Write the encoder into a checkpoint directory being assembled."""
    if s.uses_deepspeed:
        s.engine.save(os.path.join(directory, "deepspeed"), tag="encoder")
        if ctx.is_main:  # ZeRO <= 2 keeps full weights on every rank: also a plain copy
            torch.save({"module": s.engine.module.state_dict()}, os.path.join(directory, "encoder.pt"))
    elif ctx.is_main:
        torch.save(s.engine.state_dict(), os.path.join(directory, "encoder.pt"))


def restore(s: Setup, cfg: RunConfig, ctx: ParallelContext, log: logging.Logger) -> Tuple[int, int, int]:
    """Resume from the newest checkpoint in train.out_dir; returns (step, epoch, batch)."""
    path = ckpt.find_resume(cfg.train.out_dir, ctx) if cfg.train.resume else None
    if path is None:
        return 0, 0, 0
    m = ckpt.read_manifest(path)
    ckpt.check_compatible(path, m, {"num_classes": s.num_classes, "embedding_dim": cfg.model.embedding_dim,
                                    "head": cfg.head.name, "encoder": cfg.model.encoder})
    with _mismatch_is_checkpoint_error(ckpt.head_file(path, ctx.rank)):
        if m["world_size"] != ctx.world_size:
            components.reshard_head(s, path, m, ctx)
        else:
            hs = ckpt.load_head_state(path, ctx.rank, map_location=s.device)
            s.head.load_state_dict(hs["head"])
            s.head_opt.load_state_dict(hs["optimizer"])
            ckpt.restore_rng(hs, s.device)
    if s.uses_deepspeed:
        with _mismatch_is_checkpoint_error(os.path.join(path, "deepspeed")):
            s.engine.load(os.path.join(path, "deepspeed"), tag="encoder")
    else:
        from xclass.train.safe_io import safe_load

        f = os.path.join(path, "encoder.pt")
        with _mismatch_is_checkpoint_error(f):
            s.engine.load_state_dict(safe_load(f, map_location=s.device))
    log.info(f"step {m['step']}: resumed from {path}")
    return int(m["step"]), int(m["epoch"]), int(m["batch_in_epoch"])


@contextlib.contextmanager
def _mismatch_is_checkpoint_error(f: str) -> Iterator[None]:
    """A state that does not fit this run (other widths, another optimizer): one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        if isinstance(exc, ckpt.CheckpointError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ckpt.CheckpointError(f"{f}: does not fit this run's model/optimizer ({first}); "
                                   "use a new train.out_dir or the run's original config") from None
