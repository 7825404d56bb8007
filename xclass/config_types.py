"""Mapping <-> frozen dataclass conversion with type checks that name the key path."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Mapping, Union


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key path."""


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _check(value: Any, t: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to type ``t`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(t)
    if t is Any:
        return value
    if origin is Union:
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{source}: key '{key}' has the wrong type: expected "
                          f"{' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(t):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return from_dict(t, value, source=source, prefix=key + ".")
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {value!r}")
        (a,) = typing.get_args(t) or (Any,)
        return [_check(v, a, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - all config fields use the types above
        return value
    raise ConfigError(f"{source}: key '{key}' must be {_type_name(t)}, got {value!r}")


def from_dict(cls: Any, d: Mapping[str, Any], *, source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``; unknown keys and bad types raise ConfigError."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key '{prefix}{k}' (known keys here: {known})")
    kwargs = {k: _check(v, hints[k], prefix + k, source) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a dataclass's own check (__post_init__): add the file
        raise ConfigError(f"{source}: {exc}") from None


def to_dict(obj: Any) -> Dict[str, Any]:
    """Plain nested dicts (YAML/JSON friendly)."""
    return dataclasses.asdict(obj)
