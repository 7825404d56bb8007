"""Reading configuration YAML: a file with its ``base:`` chain merged (base first, each relative
path resolved against the file that names it) and ``key.path=value`` command-line overrides.
Plain dicts in, plain dicts out; :mod:`xclass.config` turns them into the typed config."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Sequence

import yaml

from xclass.config_checks import check_yaml_size
from xclass.config_types import ConfigError


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file not readable (permission denied)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc)[:300]}") from None
    if raw is None:
        return {}
    check_yaml_size(raw, path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def deep_merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge: ``over`` wins; nested mappings merge key by key."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_raw(path: str, _seen: Sequence[str] = ()) -> Dict[str, Any]:
    """YAML with its ``base:`` chain merged (base first). Relative paths resolved per file."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"{path}: circular base: include")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return _resolve_paths(raw, os.path.dirname(path))
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key 'base' must be a file path string")
    parent = load_raw(os.path.join(os.path.dirname(path), base), tuple(_seen) + (path,))
    return deep_merge(parent, _resolve_paths(raw, os.path.dirname(path)))


def _resolve_paths(raw: Dict[str, Any], here: str) -> Dict[str, Any]:
    """deepspeed.config is relative to the YAML that names it."""
    ds = raw.get("deepspeed")
    if isinstance(ds, dict) and isinstance(ds.get("config"), str) and not os.path.isabs(ds["config"]):
        raw = deep_merge(raw, {"deepspeed": {"config": os.path.normpath(os.path.join(here, ds["config"]))}})
    return raw


def parse_override(text: str) -> Dict[str, Any]:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, val = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(val) if val.strip() else ""
    except yaml.YAMLError:
        value = val
    check_yaml_size(value, f"override {key.strip()}")
    out: Dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out
