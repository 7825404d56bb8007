"""One place that imports every registering module and builds components from config.

Registries fill up as a side effect of importing the modules that define their items;
``load_all()`` imports them so a name in a config always resolves.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from xclass.registry import UnknownNameError

REGISTERING_MODULES: Tuple[str, ...] = (
    "xclass.losses.margins",
    "xclass.heads",
    "xclass.heads.prototypical",
    "xclass.heads.xmc",
    "xclass.heads.zloss",
    "xclass.models",
    "xclass.eval.metrics",
)


def load_all() -> None:
    """Import every module that registers margins, heads, encoders, decoders or metrics."""
    for mod in REGISTERING_MODULES:
        importlib.import_module(mod)


def build_encoder(model_cfg: Any, meta: Mapping[str, Any]) -> torch.nn.Module:
    """The encoder named in the config (registry ``xclass.models.ENCODERS``)."""
    from xclass.models import build_encoder as _build

    return _build(model_cfg, meta)


def make_decoder(task: str, meta: Mapping[str, Any], model_cfg: Any = None) -> Callable[[Dict[str, Any]], Tuple[Dict[str, torch.Tensor], torch.Tensor]]:
    """batch (numpy dict from the reader) -> (encoder inputs, labels). With ``model_cfg`` of an
    encoder over raw text (``hf``), the ``text`` column is tokenised here, in the data path."""
    from xclass.models import ENCODER_INPUTS, decode_batch

    tok = None
    if model_cfg is not None and ENCODER_INPUTS.get(getattr(model_cfg, "encoder", "")) == "text":
        from xclass.models.encoders.hf import tokenizer_for

        tok = tokenizer_for(model_cfg)

    def decode(batch: Dict[str, Any]):
        if tok is not None and "text" in batch:
            batch = dict(batch)
            batch.update(tok(list(batch.pop("text"))))
        return decode_batch(task, batch, meta)

    return decode


def input_columns(task: str, encoder: str, meta: Any = None) -> List[str]:
    """The Parquet columns to read: ``id``, the label column and the encoder's inputs (with
    ``token_weights`` when ``meta`` says the data has them and the encoder uses them)."""
    from xclass.models.decoders import input_columns as _cols

    return ["id"] + _cols(task, encoder, meta=meta)


def make_reader(paths: Sequence[str], cfg: Any, meta: Mapping[str, Any], ctx: Any) -> Any:
    """This rank's streaming reader of the training split (deterministic per seed/epoch/rank);
    ``data.sampler: m_per_class`` groups each rank's batch into label groups of ``data.m_per_class``."""
    from xclass.data.grouping import check_sampler
    from xclass.data.reader import ParquetReader

    check_sampler(cfg.data, ctx.world_size)  # again: the world size may differ from cluster.workers
    cols = input_columns(cfg.data.task, cfg.model.encoder, meta)
    group = dict(m_per_class=cfg.data.m_per_class if cfg.data.sampler == "m_per_class" else 0,
                 balance_power=cfg.data.balance_power if cfg.data.sampler == "class_balanced" else 0.0,
                 label_column="label")
    if cfg.data.shard_mode == "global_batch":
        from xclass.train.global_batch import GlobalBatchSlicer

        full = ParquetReader(list(paths), cols, rank=0, world_size=1, batch_rows=cfg.data.batch_size,
                             seed=cfg.data.seed, drop_last=True, **group)
        return GlobalBatchSlicer(full, ctx.rank, ctx.world_size)
    if cfg.data.shard_mode != "rows":
        raise UnknownNameError(f"unknown data.shard_mode {cfg.data.shard_mode!r} (rows, global_batch)")
    per_rank = max(1, cfg.data.batch_size // ctx.world_size)
    return ParquetReader(list(paths), cols, rank=ctx.rank, world_size=ctx.world_size, batch_rows=per_rank,
                         seed=cfg.data.seed, drop_last=True, **group)


def reshard_head(setup: Any, path: str, manifest: Dict[str, Any], ctx: Any) -> None:
    """Load head shards saved at another world size into this rank's shard."""
    from xclass.train.reshard import load_resharded

    load_resharded(setup, path, manifest, ctx)
