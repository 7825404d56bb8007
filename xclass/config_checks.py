"""Range checks of a :class:`~xclass.config.RunConfig`: every numeric key in its valid range
(finite floats, positive counts) and every enumerated key in its set. Each failure is a
ConfigError naming the key (and the CLI flag where one sets it)."""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from xclass.config_types import ConfigError
from xclass.tasks.base import NamesView

TASKS = NamesView()  # the registered task names (xclass/tasks/), a live view

_FLAGS = {"cluster.workers": " (--workers)", "cluster.address": " (--address)"}

#: (key, minimum, maximum or None); the value must lie in [min, max]
_INT_RANGES = [
    ("data.batch_size", 1, None), ("data.num_classes", 0, None), ("model.embedding_dim", 1, None),
    ("data.spec_mask_frames", 0, None), ("data.spec_mask_bins", 0, None), ("data.crop_frames", 0, None),
    ("optim.warmup_steps", 0, None), ("train.epochs", 0, None), ("train.max_steps", 0, None),
    ("train.log_every", 1, None), ("train.checkpoint_every", 0, None), ("train.keep_last", 0, None),
    ("train.grad_accum", 1, None), ("train.ensemble", 1, None), ("train.max_nonfinite_steps", 1, None),
    ("eval.batch_size", 1, None),
    ("cluster.workers", 1, None), ("cluster.cpus_per_worker", 1, None), ("cluster.max_failures", 0, None),
]
_FLOAT_RANGES = [
    ("optim.lr", 0.0, None), ("optim.momentum", 0.0, 1.0), ("optim.weight_decay", 0.0, None),
    ("optim.head_lr", 0.0, None), ("optim.grad_clip", 0.0, None), ("head.sample_rate", 0.0, 1.0),
    ("head.label_smoothing", 0.0, 1.0), ("eval.propensity_a", 0.0, None), ("eval.propensity_b", 0.0, None),
    ("data.balance_power", 0.0, 1.0), ("data.hflip", 0.0, 1.0), ("data.spec_mask", 0.0, 1.0),
]
_CHOICES = [
    ("data.task", TASKS), ("data.shard_mode", ("rows", "global_batch")),
    ("data.sampler", ("shuffle", "m_per_class", "class_balanced")), ("optim.name", ("sgd", "adam", "adamw")),
    ("optim.schedule", ("constant", "cosine", "linear")), ("train.precision", ("fp32", "bf16")),
    ("cluster.backend", ("gloo", "nccl")), ("deepspeed.zero_stage", (None, 0, 1, 2)),
]


def _get(cfg: Any, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        if not hasattr(obj, part):
            return _MISSING
        obj = getattr(obj, part)
    return obj


_MISSING = object()


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"key '{key}'{_FLAGS.get(key, '')} {msg}")


def _in_range(key: str, v: Any, lo: float, hi: Optional[float]) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        _fail(key, f"must be a finite number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        _fail(key, f"must be {bound}, got {v!r}")


def below(v: Any, low: float, strict: bool = False) -> Optional[str]:
    """``"must be > low, got v"`` (``>=`` unless ``strict``) when the number ``v`` is under its
    lower bound, else None: the message of the command-line and component checks."""
    if v < low or (strict and v == low):
        return f"must be {'>' if strict else '>='} {low}, got {v}"
    return None


def check_ranges(cfg: Any) -> None:
    """Raise ConfigError for the first out-of-range or unknown value of ``cfg``."""
    for key, lo, hi in [*_INT_RANGES, *_FLOAT_RANGES]:
        v = _get(cfg, key)
        if v is not _MISSING and v is not None:
            _in_range(key, v, lo, hi)
    for key, allowed in _CHOICES:
        v = _get(cfg, key)
        if v is not _MISSING and v not in allowed:
            _fail(key, f"must be one of {', '.join(map(repr, allowed))}, got {v!r}")
    if cfg.head.label_smoothing >= 1.0:
        _fail("head.label_smoothing", f"must be < 1, got {cfg.head.label_smoothing!r}")
    if cfg.head.sample_rate <= 0.0:
        _fail("head.sample_rate", f"must be > 0, got {cfg.head.sample_rate!r}")
    if cfg.train.epochs == 0 and cfg.train.max_steps == 0:
        _fail("train.epochs", "must be >= 1 when train.max_steps is 0")
    _check_ks(cfg.eval.ks)
    _check_sparse(cfg)
    if cfg.data.hflip > 0 and cfg.data.task != "face":
        _fail("data.hflip", f"mirrors face images: it needs data.task face, got {cfg.data.task!r}")
    for key, what in (("spec_mask", "masks filterbanks"), ("crop_frames", "crops utterances")):
        if getattr(cfg.data, key) > 0 and cfg.data.task != "speaker":
            _fail(f"data.{key}", f"{what}: it needs data.task speaker, got {cfg.data.task!r}")


def _check_sparse(cfg: Any) -> None:
    """optim.sparse_embeddings: SparseAdam (an Adam) in the plain encoder engine only."""
    if not getattr(cfg.optim, "sparse_embeddings", False):
        return
    if cfg.optim.name not in ("adam", "adamw"):
        _fail("optim.sparse_embeddings", f"needs optim.name adam or adamw, got {cfg.optim.name!r}")
    if cfg.deepspeed.enabled:
        _fail("optim.sparse_embeddings", "is not supported with deepspeed.enabled (the DeepSpeed "
              "engine steps a dense optimizer)")


def _check_ks(ks: Iterable[int]) -> None:
    for i, k in enumerate(ks):
        if k < 1:
            _fail(f"eval.ks[{i}]", f"must be >= 1, got {k!r}")


#: the most values a YAML document may expand to (aliases counted at every use)
MAX_YAML_NODES = 100_000


def check_yaml_size(raw: Any, where: str) -> None:
    """Refuse YAML whose aliases expand to more than MAX_YAML_NODES values (an "alias bomb"
    is tiny on disk and exponential once copied). Shared nodes are counted once per use,
    memoised, so the check itself is linear in the document."""
    memo: dict = {}

    def size(obj: Any) -> int:
        if not isinstance(obj, (dict, list, tuple)):
            return 1
        key = id(obj)
        if key not in memo:
            memo[key] = 0  # a cycle (recursive alias) counts as over the limit below
            kids = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else list(obj)
            memo[key] = 1 + sum(size(k) for k in kids)
            if memo[key] > MAX_YAML_NODES:
                raise ConfigError(f"{where}: YAML expands to more than {MAX_YAML_NODES} values "
                                  "(nested aliases?); refused")
        elif memo[key] == 0:
            raise ConfigError(f"{where}: recursive YAML alias; refused")
        return memo[key]

    size(raw)
