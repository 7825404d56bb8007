"""Head factories registered in HEADS: "margin" (sharded, any margin) and "softmax_dense"
(the single-process dense baseline: full weight, plain autograd, torch optimizers)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn

from xclass.config_checks import below
from xclass.config_types import ConfigError
from xclass.heads.base import HEADS, HeadOutput, advance_step, head_lr, host_step, torch_optimizer
from xclass.heads.sharded import ShardedMarginHead, init_class_rows
from xclass.losses import MARGINS
from xclass.losses.margins import FALLBACKS, GRAD_MODES
from xclass.losses.reference import dense_margin_loss, dense_scores


#: margin parameters with a lower bound: name -> (bound, is the bound excluded)
_MARGIN_BOUNDS = {"s": (0.0, True), "r": (0.0, True), "sigma": (0.0, False), "eps": (0.0, False), "k": (1, False)}


#: string margin parameters and their values
CHOICES = {"grad": GRAD_MODES, "fallback": FALLBACKS}


def check_margin_params(name: str, params: Dict[str, Any]) -> None:
    """ConfigError naming ``head.margin_params.<key>``: a key the margin does not take, a number
    that is not finite, or a scale / radius <= 0, a deviation or eps < 0, sub-centres k < 1.
    Margins may be negative (a negative margin is a published few-shot choice)."""
    defaults = {f.name: f.default for f in dataclasses.fields(MARGINS.get(name)) if f.init}
    for key, v in params.items():
        where = f"head.margin_params.{key}"
        if key not in defaults:
            raise ConfigError(f"unknown key '{where}' for margin {name!r} (known: {', '.join(defaults)})")
        _check_kind(where, defaults[key], v)
        if key in CHOICES and v not in CHOICES[key]:
            raise ConfigError(f"'{where}' must be one of {', '.join(CHOICES[key])}, got {v!r}")
        why = below(v, *_MARGIN_BOUNDS[key]) if key in _MARGIN_BOUNDS and isinstance(v, (int, float)) else None
        if why:
            raise ConfigError(f"'{where}' {why}")


def _check_kind(where: str, default: Any, v: Any) -> None:
    """A value of the default's kind: a finite number for a number, true/false for a flag, text for text."""
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(default, bool):
        ok = isinstance(v, bool)
    elif isinstance(default, (int, float)):
        ok = number and math.isfinite(v) and (isinstance(v, int) or not isinstance(default, int))
    elif isinstance(default, str):
        ok = isinstance(v, str)
    else:
        ok = True
    if not ok:
        kind = ("true or false" if isinstance(default, bool) else "an integer" if isinstance(default, int)
                else "a finite number" if isinstance(default, float) else "a string")
        raise ConfigError(f"'{where}' must be {kind}, got {v!r}")


def build_margin(head_cfg: Any) -> Any:
    """The margin named by ``head_cfg.margin`` with ``head_cfg.margin_params`` as keyword arguments."""
    params: Dict[str, Any] = dict(getattr(head_cfg, "margin_params", None) or {})
    name = str(head_cfg.margin)
    MARGINS.get(name)                       # an unknown margin: the registry's error, naming the known ones
    check_margin_params(name, params)
    try:
        return MARGINS.build(name, **params)
    except ValueError as exc:               # a margin's own check (grad mode, fallback, ...)
        raise ConfigError(f"head.margin_params for margin {name!r}: {exc}") from None


@HEADS.register("margin")
def margin_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int) -> nn.Module:
    """Sharded margin head. head_cfg fields: margin, margin_params, sample_rate, label_smoothing,
    params (extra ShardedMarginHead kwargs: init_std, bias_init, impl, chunk, update_in_backward;
    docs/fused_head.md)."""
    extra: Dict[str, Any] = dict(getattr(head_cfg, "params", None) or {})
    check_head_params(extra, "margin")
    return ShardedMarginHead(build_margin(head_cfg), num_classes=num_classes, embedding_dim=embedding_dim,
                             ctx=ctx, seed=seed, sample_rate=float(getattr(head_cfg, "sample_rate", 1.0)),
                             label_smoothing=float(getattr(head_cfg, "label_smoothing", 0.0)), **extra)


#: head.params of the margin head (the rest of ShardedMarginHead's arguments come from head.*)
HEAD_PARAMS = ("init_std", "bias_init", "impl", "chunk", "update_in_backward")


def check_head_params(extra: Dict[str, Any], head: str, also: Tuple[str, ...] = ()) -> None:
    """ConfigError naming an unknown ``head.params`` key of ``head`` (a margin head; ``also``: the
    keys it takes besides HEAD_PARAMS, already split off ``extra``), or ``init_std`` <= 0."""
    unknown = sorted(set(extra) - set(HEAD_PARAMS))
    if unknown:
        raise ConfigError(f"unknown key 'head.params.{unknown[0]}' for head {head!r} "
                          f"(known: {', '.join([*also, *HEAD_PARAMS])})")
    std = extra.get("init_std", 0.01)
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < math.inf:
        raise ConfigError(f"'head.params.init_std' must be a finite number > 0, got {std!r}")


class DenseMarginHead(nn.Module):
    """One process, all C classes: weight [C * K, d] Parameter; loss from losses.reference."""

    def __init__(self, margin: Any, *, num_classes: int, embedding_dim: int, seed: int = 0,
                 label_smoothing: float = 0.0, init_std: float = 0.01) -> None:
        super().__init__()
        self.margin, self.num_classes, self.seed = margin, num_classes, seed
        self.label_smoothing = label_smoothing
        self.weight = nn.Parameter(init_class_rows(0, num_classes, margin.sub_centers, embedding_dim, seed, init_std))
        self.bias = nn.Parameter(torch.tensor([margin.init_bias(num_classes)], device=self.weight.device)) \
            if margin.objective == "binary" else None
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64, device=self.weight.device))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        loss = dense_margin_loss(emb, labels, self.weight, self.margin, bias=self.bias,
                                 step=host_step(self), seed=self.seed, label_smoothing=self.label_smoothing)
        return HeadOutput(loss=loss, metrics={"loss": loss.detach()})

    def local_weight(self) -> Tuple[torch.Tensor, int]:
        return self.weight.detach(), 0

    @torch.no_grad()
    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        s = dense_scores(emb, self.weight, self.margin.normalized).float()
        return s.view(s.shape[0], -1, self.margin.sub_centers).amax(-1)

    def make_optimizer(self, optim_cfg: Any) -> torch.optim.Optimizer:
        """torch SGD / AdamW; a step hook advances ``step_count`` (margin schedules, ElasticFace draws)."""
        opt = torch_optimizer(self.parameters(), optim_cfg, head_lr(optim_cfg))
        opt.register_step_post_hook(lambda *_: advance_step(self))
        return opt


@HEADS.register("softmax_dense")
def softmax_dense_head(head_cfg: Any, *, num_classes: int, embedding_dim: int, ctx: Any, seed: int) -> nn.Module:
    """Dense baseline; world size 1 only (it holds all C class vectors)."""
    if getattr(ctx, "world_size", 1) != 1:
        raise ValueError("head 'softmax_dense' holds every class vector; use head 'margin' when world_size > 1")
    if float(getattr(head_cfg, "sample_rate", 1.0)) < 1.0:
        raise ValueError("head 'softmax_dense' does not sample classes; use head 'margin'")
    return DenseMarginHead(build_margin(head_cfg), num_classes=num_classes, embedding_dim=embedding_dim,
                           seed=seed, label_smoothing=float(getattr(head_cfg, "label_smoothing", 0.0)))
