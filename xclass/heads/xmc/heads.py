"""Registers the XMC heads in HEADS: "dual_decoupled" and "ova". Options go in ``head.params``.

dual_decoupled params: label_repr (free | text | text+free | features | features+free: a tower
over labels.parquet's ``features``, e.g. frozen text-encoder embeddings of the label text), scale (1 / temperature, default 20),
normalize (cosine scores, default true), init_std, token_dim, hidden (label tower MLP widths),
shortlist_k (0 = all labels every step), shortlist_refresh (steps), shortlist_index (flat | hnsw),
faiss_threads. ova params: normalize, scale, pos_weight, reduction (sum | mean), init_std,
bias_init, init_from (exported label embeddings of a dual run), init_scale.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

from xclass.config_types import ConfigError
from xclass.data.meta import load_meta
from xclass.heads.base import HEADS
from xclass.heads.partition import class_range
from xclass.heads.xmc.common import read_label_features, read_label_tokens, vocab_size_of
from xclass.heads.xmc.dual import DualDecoupledHead
from xclass.heads.xmc.ova import OvAHead


def _params(head_cfg: Any, name: str) -> Dict[str, Any]:
    if float(getattr(head_cfg, "sample_rate", 1.0)) < 1.0:
        raise ValueError(f"head {name!r}: sample_rate does not apply (dual_decoupled: use params.shortlist_k)")
    return dict(getattr(head_cfg, "params", None) or {})


@HEADS.register("dual_decoupled")
def dual_decoupled_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int,
                        data_path: Optional[str] = None) -> nn.Module:
    """Dual encoder head; label_repr text / text+free reads ``data_path``/labels.parquet."""
    p = _params(head_cfg, "dual_decoupled")
    features = str(p.get("label_repr", "free")).startswith("features")
    if features and "label_features" not in p:
        if not data_path:
            raise ValueError("head 'dual_decoupled': label_repr features needs the dataset directory (data_path)")
        start, stop = class_range(num_classes, ctx.rank, ctx.world_size)
        p["label_features"] = read_label_features(data_path, start, stop)
    elif not features and p.get("label_repr", "free") != "free" and "label_tokens" not in p:
        if not data_path:
            raise ValueError("head 'dual_decoupled': label_repr text needs the dataset directory (data_path)")
        start, stop = class_range(num_classes, ctx.rank, ctx.world_size)
        p["label_tokens"] = read_label_tokens(data_path, start, stop)
        p.setdefault("vocab_size", vocab_size_of(load_meta(data_path), data_path))
    try:
        return DualDecoupledHead(num_classes=num_classes, embedding_dim=embedding_dim, ctx=ctx, seed=seed, **p)
    except TypeError as exc:  # an unknown keyword
        raise ConfigError(f"head 'dual_decoupled': bad head.params {sorted(p)}: {exc}") from None


@HEADS.register("ova")
def ova_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int) -> nn.Module:
    """Sharded one-vs-all BCE head."""
    p = _params(head_cfg, "ova")
    try:
        return OvAHead(num_classes=num_classes, embedding_dim=embedding_dim, ctx=ctx, seed=seed, **p)
    except TypeError as exc:  # an unknown keyword
        raise ConfigError(f"head 'ova': bad head.params {sorted(p)}: {exc}") from None
