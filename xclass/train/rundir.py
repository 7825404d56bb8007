"""The run directory before training starts (driver side, once per ``xclass train``).

* leftovers of a killed checkpoint write (``checkpoints/step_*.tmp``) are removed;
* ``train.resume=false`` into a directory that already holds a run is refused: its later
  checkpoints would stay "latest" and export/resume would silently use the old run. With
  ``train.overwrite=true`` (``xclass train --overwrite``) the old run is moved aside to
  ``OUT_DIR.old-YYYYmmdd-HHMMSS`` first (never deleted);
* a single run into a directory that holds an ensemble (``train.ensemble``, its ``ensemble.json``)
  is refused unless it replaces it that way (:mod:`xclass.train.members` applies the same rules to
  an ensemble's directory).
"""
from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Any, Optional

from xclass.config_types import ConfigError
from xclass.train.checkpoint import ckpt_root
from xclass.train.members import MANIFEST


def prepare_run_dir(cfg: Any) -> Optional[str]:
    """Apply the rules above; returns where an old run was moved, if it was."""
    run_dir = os.path.abspath(cfg.train.out_dir)
    ensemble = os.path.isfile(os.path.join(run_dir, MANIFEST))
    if ensemble and cfg.train.resume:
        raise ConfigError(f"train.out_dir={run_dir} holds an ensemble ({MANIFEST}) and train.ensemble=1: use a "
                          "new out_dir, the ensemble's train.ensemble, or --overwrite with train.resume=false")
    clean_stale_checkpoint_tmp(run_dir)
    if cfg.train.resume or not (ensemble or holds_run(run_dir)):
        return None
    return move_aside(run_dir, cfg.train.overwrite)


def move_aside(run_dir: str, overwrite: bool) -> str:
    """A run in ``run_dir`` that ``train.resume=false`` would mix with a new one: refused, or with
    ``overwrite`` renamed to ``OUT_DIR.old-YYYYmmdd-HHMMSS`` (a free name), which is returned."""
    if not overwrite:
        raise ConfigError(
            f"train.out_dir={run_dir} already holds a run and train.resume=false: refusing to mix two "
            "runs; pass --overwrite (train.overwrite=true) to move the old run aside, or use a new out_dir")
    aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.exists(aside):
        aside, n = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}", n + 1
    os.rename(run_dir, aside)
    return aside


def holds_run(run_dir: str) -> bool:
    """A run directory with checkpoints or logged metrics."""
    root = ckpt_root(run_dir)
    has_ckpt = os.path.isdir(root) and any(n.startswith("step_") for n in os.listdir(root))
    return has_ckpt or os.path.exists(os.path.join(run_dir, "metrics.jsonl"))


def clean_stale_checkpoint_tmp(run_dir: str) -> None:
    """Remove checkpoint directories a killed run left half-written (never a complete one)."""
    for tmp in glob.glob(os.path.join(ckpt_root(run_dir), "step_*.tmp")):
        shutil.rmtree(tmp, ignore_errors=True)
