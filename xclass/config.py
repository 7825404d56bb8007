"""Typed, frozen run configuration loaded from YAML.

``load_config(path, overrides)`` reads a YAML file, merges its ``base:`` include (a path
relative to the file; bases may chain), applies ``key.path=value`` overrides, and builds a
:class:`RunConfig`. Unknown keys and wrong types raise :class:`ConfigError` naming the key
path and the file. Component-specific keyword dictionaries (``*.params``,
``head.margin_params``) are checked by the component that consumes them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from xclass.config_checks import check_ranges
from xclass.config_types import ConfigError, from_dict, to_dict
from xclass.config_yaml import deep_merge, load_raw, parse_override


@dataclass(frozen=True)
class DataConfig:
    task: str = "face"
    """One of face, speaker, quic, xmc (selects schema, input columns and evaluation)."""
    path: str = "runs/data/face"
    """Dataset directory written by ``xclass make-data`` (train.parquet, test.parquet, meta.json)."""
    num_classes: int = 0
    """Number of training classes; 0 = read from the dataset's meta.json."""
    batch_size: int = 64
    """Global batch size (split over workers; each rank reads batch_size / world_size rows)."""
    seed: int = 0
    """Seed of the data order (shuffling depends only on seed, epoch, rank and world size)."""
    shard_mode: str = "rows"
    """rows: each rank reads its own rows once; global_batch: world-size-invariant batches."""
    sampler: str = "shuffle"
    """shuffle: random rows; m_per_class: groups of m_per_class rows of one label (angproto heads); class_balanced: rows drawn with weight N_c ** -balance_power (0 = as the data, 1 = every class alike; in [0, 1])."""
    m_per_class: int = 2
    """Rows per label group with sampler m_per_class (>= 2; each rank's batch must be a multiple of it)."""
    balance_power: float = 0.5
    """Sampler class_balanced, in (0, 1]: a row of class c (N_c rows) is drawn with weight N_c ** -p (1: classes equally often; 0.5: square-root)."""
    generate: Dict[str, Any] = field(default_factory=dict)
    """If the dataset is missing, ``xclass train`` generates it with these make-data arguments."""
    validate: bool = True
    """Check the training split in one streaming pass before step 1 (labels, finite values, unique ids)."""
    prefetch: int = 2
    """Batches read and decoded ahead on a background thread (0 = synchronous, at most 64)."""
    hflip: float = 0.0
    """Training only, face data: probability that an image is mirrored left-right (arcface_torch uses 0.5; 0 = off)."""
    spec_mask: float = 0.0
    """Training only, speaker data: probability that a row's filterbank gets one time and one frequency mask (SpecAugment as WeSpeaker applies it, 0.6 there; 0 = off)."""
    spec_mask_frames: int = 10
    """With spec_mask: the time mask's width is drawn from 0..spec_mask_frames frames."""
    spec_mask_bins: int = 8
    """With spec_mask: the frequency mask's width is drawn from 0..spec_mask_bins mel bins."""
    crop_frames: int = 0
    """Training only, speaker data: each utterance longer than this many frames is cut to a random window of it, drawn anew every epoch (WeSpeaker trains on 200-frame chunks; 0 = whole utterances)."""

    def __post_init__(self) -> None:
        if not 0 <= self.prefetch <= 64:
            raise ConfigError(f"key 'data.prefetch' must be in [0, 64], got {self.prefetch}")


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "mlp"
    """Encoder registry name (see ``xclass.models.ENCODERS``)."""
    embedding_dim: int = 128
    """Output embedding size d."""
    params: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the encoder factory (checked by the factory)."""


@dataclass(frozen=True)
class HeadConfig:
    name: str = "margin"
    """Head registry name (``xclass.heads.base.HEADS``): margin, zloss, zloss_efficient, ..."""
    margin: str = "arcface"
    """Margin registry name for margin heads (softmax, cosface, arcface, ...)."""
    margin_params: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the margin (s, m, ...)."""
    sample_rate: float = 1.0
    """Partial-FC rate of sampled negative classes per rank (1.0 = exact full softmax)."""
    label_smoothing: float = 0.0
    """Label smoothing over the global class count."""
    params: Dict[str, Any] = field(default_factory=dict)
    """Extra head keyword arguments (e.g. Z-loss a, b)."""


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"
    """Encoder optimizer: sgd, adam or adamw (the head uses the same kind unless it has its own rule)."""
    lr: float = 0.1
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 / decoupled weight decay."""
    head_lr: Optional[float] = None
    """Head learning rate (default: lr)."""
    schedule: str = "cosine"
    """constant, cosine or linear (decay to 0 at the last step)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    grad_clip: float = 0.0
    """Global gradient-norm clip for encoder and head together (0 = off)."""
    sparse_embeddings: bool = False
    """Encoder embedding tables get sparse gradients and lazy SparseAdam (only the rows a batch touches are updated; no weight decay on them); the rest uses optim.name (adam or adamw). Not with DeepSpeed."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    """Passes over the training data."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = epochs decide)."""
    out_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, loss.png."""
    seed: int = 0
    """Seed of model initialisation."""
    ensemble: int = 1
    """Members of a deep ensemble trained by one command (K > 1): OUT_DIR/member-k, each a whole run with train.seed + 1000 k; export-index --run OUT_DIR fuses them (mean cosine)."""
    init_from: str = ""
    """Run directory whose newest checkpoint's ENCODER weights start this run (fine-tuning: the head, optimizer and schedule start fresh; a resume of this run takes precedence). "" = random init."""
    log_every: int = 10
    """Steps between metric lines."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints kept."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    precision: str = "fp32"
    """fp32 or bf16 (autocast for the encoder; heads accumulate in fp32)."""
    resume: bool = True
    """Resume from the latest checkpoint in out_dir if there is one."""
    overwrite: bool = False
    """With resume=false and a run already in out_dir: move it aside (OUT_DIR.old-TIME) instead of refusing."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    max_nonfinite_steps: int = 3
    """Consecutive optimizer steps with a non-finite loss or gradient (skipped) before the run stops."""


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "flat"
    """flat (exact inner product), hnsw or ivfpq."""
    params: Dict[str, Any] = field(default_factory=dict)
    """Index parameters (hnsw: M, ef_construction, ef_search; ivfpq: nlist, m, nbits, nprobe)."""
    use_gpu: bool = False
    """Use GPU faiss when available."""


@dataclass(frozen=True)
class EvalConfig:
    ks: List[int] = field(default_factory=lambda: [1, 3, 5])
    """Cut-offs for P@k, nDCG@k, PSP@k, recall@k."""
    batch_size: int = 1024
    """Query chunk size."""
    propensity_a: float = 0.55
    """Inverse-propensity constant A (XMC)."""
    propensity_b: float = 1.5
    """Inverse-propensity constant B (XMC)."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Index used for retrieval."""


@dataclass(frozen=True)
class ClusterConfig:
    workers: int = 1
    """Number of training processes (Ray workers)."""
    address: Optional[str] = None
    """Ray address: None = start a local instance; 'auto' or HOST:PORT = join a cluster."""
    use_gpu: bool = False
    """One GPU per worker: the run's device is cuda:LOCAL_RANK (an error when CUDA is missing)."""
    allow_cpu_fallback: bool = False
    """With use_gpu: train on the CPU (with a warning) instead of failing when CUDA is missing."""
    cpus_per_worker: int = 1
    """CPU cores reserved per worker."""
    max_failures: int = 0
    """Restarts from the last checkpoint after a worker failure."""
    backend: str = "gloo"
    """torch.distributed backend (gloo on CPU, nccl on GPU)."""


@dataclass(frozen=True)
class DeepSpeedConfig:
    enabled: bool = False
    """Wrap the encoder with deepspeed.initialize."""
    zero_stage: Optional[int] = None
    """ZeRO stage 0, 1 or 2 for the encoder (None: the JSON's stage, else 0)."""
    bf16: Optional[bool] = None
    """bf16 training of the encoder (None: the JSON's setting, else off)."""
    config: Optional[str] = None
    """Optional DeepSpeed JSON (relative to the YAML); keys here override it."""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.data.sampler != "shuffle":  # the data.sampler keys against the task and batch
            from xclass.data.grouping import check_sampler

            check_sampler(self.data, self.cluster.workers)

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "RunConfig":
        return from_dict(cls, d, source=source)

    def digest(self) -> str:
        """Short hash of the model-shaping fields (stored in checkpoint manifests)."""
        keep = {"model": to_dict(self.model), "head": to_dict(self.head), "task": self.data.task}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Load ``path`` (or the defaults when None), apply overrides, validate, freeze."""
    raw = load_raw(path) if path else {}
    for o in overrides:
        raw = deep_merge(raw, parse_override(o))
    return from_dict(RunConfig, raw, source=path or "<defaults>")


def save_config(cfg: RunConfig, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)


def describe(cls: type = RunConfig, prefix: str = "") -> List[str]:
    """``key.path (type, default): docstring`` lines, for --help and docs/configuration.md."""
    import ast
    import inspect

    docs: Dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[a.target.id] = str(b.value.value)  # type: ignore[attr-defined]
    except (OSError, TypeError):
        pass
    hints = typing.get_type_hints(cls)
    lines: List[str] = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            lines += describe(t, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tname = getattr(t, "__name__", str(t)).replace("typing.", "")
        lines.append(f"{prefix}{f.name} ({tname}, default {default!r}): {docs.get(f.name, '')}")
    return lines
