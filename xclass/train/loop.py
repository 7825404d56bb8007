"""The one explicit training loop. Single process, torchrun and Ray workers all call
:func:`train`; nothing else trains.

Per optimizer step (``grad_accum`` micro-batches): encoder forward on this rank's rows
-> head (gathers the global batch, sharded over classes) -> backward -> encoder grads
averaged (or DeepSpeed) -> clip -> LR schedule -> head step + encoder step -> log ->
checkpoint.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional

import torch

from xclass.config import RunConfig, save_config
from xclass.data.prefetch import prefetch
from xclass.parallel import ParallelContext
from xclass.parallel.device import run_device
from xclass.train import checkpoint as ckpt
from xclass.train import nonfinite
from xclass.train.clip import clip_gradients
from xclass.train.report import RunLog, get_logger, plot_training, write_worker_info
from xclass.train.schedule import lr_at
from xclass.train.setup import Setup, build_setup, encoder_state, head_memory_mb, restore


def train(cfg: RunConfig, ctx: Optional[ParallelContext] = None,
          report: Optional[Callable[[Dict[str, Any], Optional[str]], None]] = None) -> Dict[str, Any]:
    """Train ``cfg`` on this process's rank. Returns the final metrics row (replicated).

    ``report(metrics, checkpoint_dir)`` is called after every checkpoint (Ray Train passes
    ``ray.train.report``'s adapter here); it is never needed for correctness.
    """
    ctx = ctx or ParallelContext.from_env()
    if cfg.cluster.use_gpu and ctx.device.type != "cuda":  # a caller that did not decide the device
        ctx = ctx.with_device(run_device(cfg, ctx.local_rank))
    log = get_logger(ctx)
    run_dir = cfg.train.out_dir
    s, runlog, (step, epoch, batch_in_epoch) = _start(cfg, ctx, log)
    total = s.total_steps
    last: Dict[str, Any] = {}
    t_last, n_last, step_last = time.perf_counter(), 0, step
    while step < total:
        batches = _epoch_batches(s, cfg, epoch, batch_in_epoch)
        for micro, (inputs, labels) in enumerate(batches):
            if s.head_opt_updates_in_backward:  # the head steps in its backward: its LR first
                s.set_head_lr(lr_at(step, total, s.head_peak_lr, cfg.optim.schedule, cfg.optim.warmup_steps))
            out = _micro_step(s, inputs, labels)
            n_last += int(labels.shape[0])
            if not s.engine.at_boundary():
                s.engine.step()
                continue
            gnorm, lr = _optimizer_step(s, cfg, ctx, step, total)
            step += 1
            # the only device->host reads of a step happen here, on log and checkpoint steps
            if step % cfg.train.log_every == 0 or step == total:
                loss, gnorm_f = float(out.loss.detach()), float(gnorm)  # the device catches up here,
                dt = time.perf_counter() - t_last                       # so dt covers its work
                last = _log_row(s, runlog, out, step, step - step_last, epoch, loss, lr, gnorm_f,
                                n_last * ctx.world_size / max(dt, 1e-9), dt)
                t_last, n_last, step_last = time.perf_counter(), 0, step
                nonfinite.check_streak(s, step, cfg.train.max_nonfinite_steps)
            if _want_checkpoint(cfg, step, total) and not nonfinite.streak(s):
                path = save(s, cfg, ctx, step, epoch, micro + 1 + batch_in_epoch)
                if report is not None:
                    report({"step": step, "loss": float(out.loss.detach()), **last}, path)
            if step >= total:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        break
    return _finish(s, ctx, runlog, log, run_dir, step, last)


def _finish(s: Setup, ctx: ParallelContext, runlog: RunLog, log: Any, run_dir: str, step: int,
            last: Dict[str, Any]) -> Dict[str, Any]:
    """Close the run log, refuse a run that ended on non-finite steps, plot (rank 0); the final row."""
    runlog.close()
    if nonfinite.streak(s):
        raise nonfinite.NonFiniteError(f"step {step}: the last {nonfinite.streak(s)} step(s) were not finite; "
                                       "no final checkpoint written")
    if ctx.is_main:
        plot_training(run_dir)
    log.info(f"step {step}: done; run directory {os.path.abspath(run_dir)}")
    return {"step": step, **last}


def _epoch_batches(s: Setup, cfg: RunConfig, epoch: int, batch_in_epoch: int) -> Any:
    """The prefetched (inputs, labels) of ``epoch``, from batch ``batch_in_epoch`` on (a resume)."""
    s.reader.set_epoch(epoch)
    if hasattr(s.decode, "set_epoch"):  # data.crop_frames: new windows every epoch
        s.decode.set_epoch(epoch)
    if batch_in_epoch:
        s.reader.load_state_dict({"epoch": epoch, "batch": batch_in_epoch})
    return prefetch(s.reader, s.decode, cfg.data.prefetch, s.device)


def _micro_step(s: Setup, inputs: Dict[str, torch.Tensor], labels: torch.Tensor) -> Any:
    """Forward and backward of one micro-batch already on the run's device; returns the head's
    output (``loss`` and ``metrics`` stay device tensors: no host sync here)."""
    emb = s.engine(s.augment(inputs))
    out = s.head(emb, labels)
    s.engine.backward(out.loss)
    return out


def _start(cfg: RunConfig, ctx: ParallelContext, log: Any) -> tuple:
    """Run directory, model, data and optimizers, restored from the newest checkpoint if any.
    Returns (setup, run log, (step, epoch, batch in epoch))."""
    run_dir = cfg.train.out_dir
    if ctx.is_main:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
    s: Setup = build_setup(cfg, ctx)
    write_worker_info(run_dir, ctx)
    pos = restore(s, cfg, ctx, log)
    runlog = RunLog(run_dir, ctx, s.total_steps, pos[0], progress=cfg.train.progress)
    if pos[0] > 0:
        runlog.event(pos[0], "resumed", epoch=pos[1], batch_in_epoch=pos[2])
    log.info(f"step {pos[0]}: training {s.total_steps} steps, world size {ctx.world_size}, "
             f"{s.num_classes} classes, head {head_description(cfg, s.head)}")
    return s, runlog, pos


def head_description(cfg: RunConfig, head: Any) -> str:
    """``name/margin`` for heads that apply ``head.margin``, else only the head's name (the XMC
    and prototypical heads ignore the margin inherited from base.yaml)."""
    uses_margin = getattr(head, "margin", None) is not None
    return f"{cfg.head.name}/{cfg.head.margin}" if uses_margin else cfg.head.name


def _optimizer_step(s: Setup, cfg: RunConfig, ctx: ParallelContext, step: int, total: int) -> tuple:
    """At an accumulation boundary: clip, schedule the LRs of step ``step``, step the head and the
    encoder. Returns (pre-clip gradient norm: a 0-dim device tensor, encoder LR)."""
    s.engine.grads_ready()
    gnorm = clip_gradients(s, cfg.optim.grad_clip, ctx)
    lr = lr_at(step, total, cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_steps)
    if nonfinite.skip_if_nonfinite(s, gnorm, step, cfg.train.max_nonfinite_steps):
        return gnorm, lr
    s.engine.set_lr(lr)
    s.set_head_lr(lr_at(step, total, s.head_peak_lr, cfg.optim.schedule, cfg.optim.warmup_steps))
    s.head_opt.step()
    s.head_opt.zero_grad()
    s.engine.step()
    return gnorm, lr


def _log_row(s: Setup, runlog: RunLog, out: Any, step: int, steps: int, epoch: int, loss: float, lr: float,
             gnorm: float, sps: float, dt: float) -> Dict[str, Any]:
    """metrics.jsonl row of ``step`` (``steps`` optimizer steps and ``dt`` seconds since the last
    row; ``sps`` global samples/s) and the progress bar; returns the row."""
    row = {"epoch": epoch, "loss": loss, "lr": lr, "grad_norm": gnorm, "samples_per_s": sps,
           "head_mem_mb": head_memory_mb(s), "step_ms": 1000 * dt / max(1, steps)}
    row.update({k: float(v) for k, v in out.metrics.items()})
    runlog.log(step, row)
    runlog.advance(steps, {"loss": f"{loss:.4f}", "samples/s": f"{sps:.0f}", "head MB": f"{row['head_mem_mb']:.1f}"})
    return row


def _want_checkpoint(cfg: RunConfig, step: int, total: int) -> bool:
    every = cfg.train.checkpoint_every
    return step == total or (every > 0 and step % every == 0)


def save(s: Setup, cfg: RunConfig, ctx: ParallelContext, step: int, epoch: int, batch: int) -> str:
    """Write a checkpoint of encoder, head shard and data position; returns its path."""
    nonfinite.check_finite_params(s, step, ctx.group)
    manifest = {
        "step": step, "epoch": epoch, "batch_in_epoch": batch, "world_size": ctx.world_size,
        "num_classes": s.num_classes, "embedding_dim": cfg.model.embedding_dim,
        "head": cfg.head.name, "encoder": cfg.model.encoder, "config_digest": cfg.digest(),
        "shard_ranges": s.shard_ranges, "task": cfg.data.task,
        "deepspeed": bool(cfg.deepspeed.enabled),
    }
    head_state = {"head": s.head.state_dict(), "optimizer": s.head_opt.state_dict(),
                  **ckpt.rng_state(s.device), "step": step}
    return ckpt.save_checkpoint(cfg.train.out_dir, step, ctx, manifest, head_state,
                                lambda d: encoder_state(s, ctx, d), keep=cfg.train.keep_last)
