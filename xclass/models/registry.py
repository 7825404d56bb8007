"""The encoder registry and ``build_encoder(model_cfg, meta)``.

An encoder factory has the signature ``factory(meta, embedding_dim, **params)``: ``meta`` is
the dataset's ``meta.json`` dict (shapes, vocabulary size...), ``params`` come from the
config's ``model.params``. Factories are registered with :func:`register_encoder`, which
also records the tasks whose decoded inputs the encoder reads (tests use it to build inputs).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

from torch import nn

from xclass.config_types import ConfigError
from xclass.registry import Registry
from xclass.tasks.base import TaskView

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")

#: encoder name -> tasks whose decoded inputs it accepts (first = the one tests use).
ENCODER_TASKS: Dict[str, Tuple[str, ...]] = {}
#: encoder name -> "native" (the task's own columns), "features" (the dense column) or "text".
ENCODER_INPUTS: Dict[str, str] = {}

#: The encoder a task uses when the config does not say otherwise (a live view of the task records).
DEFAULT_ENCODER: Mapping[str, str] = TaskView(lambda t: t.default_encoder)


def register_encoder(name: str, tasks: Sequence[str], inputs: str = "native") -> Callable:
    """Decorator: register ``factory(meta, embedding_dim, **params)`` under ``name``.

    ``tasks``: tasks whose decoded inputs it reads; ``inputs``: "native", "features" or "text"
    (the raw ``text`` column, tokenised in the data path by the encoder's tokenizer).
    """
    if inputs not in ("native", "features", "text"):
        raise ValueError(f"inputs must be 'native', 'features' or 'text', got {inputs!r}")

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENCODERS.register(name)(factory)
        ENCODER_TASKS[name] = tuple(tasks)
        ENCODER_INPUTS[name] = inputs
        return factory

    return deco


def _field(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def encoder_params(name: str) -> Dict[str, Any]:
    """The keyword parameters of encoder ``name`` with their defaults (for docs and checks)."""
    sig = inspect.signature(ENCODERS.get(name))
    return {k: p.default for k, p in list(sig.parameters.items())[2:]
            if p.kind is p.KEYWORD_ONLY}


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise ConfigError naming ``model.params.<key>`` for keys the encoder does not take."""
    known = encoder_params(name)
    for key in params:
        if key not in known:
            raise ConfigError(f"unknown key 'model.params.{key}' for encoder {name!r} "
                              f"(known: {', '.join(sorted(known)) or '(none)'})")


def build_encoder(model_cfg: Any, meta: Mapping[str, Any]) -> nn.Module:
    """Instantiate the encoder named by ``model_cfg.encoder``.

    ``model_cfg``: a ``ModelConfig`` (or mapping) with ``encoder``, ``embedding_dim``,
    ``params``. ``meta``: the dataset's meta.json dict. Returns a module whose
    ``forward(inputs: dict[str, Tensor]) -> Tensor [B, embedding_dim]`` (replicated
    nothing: one row per local example).
    """
    name = _field(model_cfg, "encoder")
    dim = int(_field(model_cfg, "embedding_dim", 128))
    params = dict(_field(model_cfg, "params", None) or {})
    if name not in ENCODERS:
        raise ConfigError(f"unknown key value 'model.encoder: {name}' "
                          f"(known encoders: {', '.join(ENCODERS.names())})")
    if dim <= 0:
        raise ConfigError(f"'model.embedding_dim' must be positive, got {dim}")
    check_params(name, params)
    try:
        return ENCODERS.get(name)(dict(meta), dim, **params)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a value the encoder cannot build with (dropout 1.5, ...)
        raise ConfigError(f"model.params for encoder {name!r}: {exc}") from None


def meta_get(meta: Mapping[str, Any], key: str, who: str, group: str = "") -> Any:
    """``meta[key]`` (or ``meta[group][key]``, ``meta["inputs"][group][key]``) or an error
    naming the meta.json key that ``who`` (an encoder or decoder) needs."""
    candidates = [meta]
    if group:
        candidates += [meta.get(group), (meta.get("inputs") or {}).get(group)]
    for c in candidates:
        if isinstance(c, Mapping) and key in c:
            return c[key]
    where = f"'{key}'" + (f" (or '{group}.{key}')" if group else "")
    raise ConfigError(f"{who} needs key {where} in the dataset's meta.json "
                      f"(present: {', '.join(sorted(meta))})")
