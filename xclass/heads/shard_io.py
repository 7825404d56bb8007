"""Save head shards with a manifest; load them at ANY world size (re-split by global class id).

Each rank writes ``<dir>/head_shard_<rank>.pt`` = {manifest, rows: {weight, momentum...}, replicated}.
The manifest records num_classes, sub_centers K, embedding_dim and the shard's class range, so a
loader on a different world size takes, from the shards overlapping its own range, exactly its
rows (weights and every per-row optimizer state). Mismatches raise an error naming the file and
the expected vs found values; nothing is ever silently re-initialised (insightface#1758).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch


def shard_state(head: Any, opt: Optional[Any] = None) -> Dict[str, Any]:
    """This rank's head state: per-row tensors are [C_local * K, ...], others replicated."""
    rows: Dict[str, torch.Tensor] = {"weight": head.weight.detach()}
    replicated: Dict[str, Any] = {"step_count": int(head.step_count)}
    if head.bias is not None:
        replicated["bias"] = head.bias.detach()
    if opt is not None:
        for k, v in opt.state.get("weight", {}).items():
            rows["optim." + k] = v
        replicated["optim.bias"] = dict(opt.state.get("bias", {}))
        replicated["optim.meta"] = {"name": opt.name, "lr": opt.lr, "skipped": opt.skipped}
    manifest = {"num_classes": head.num_classes, "sub_centers": head.k, "embedding_dim": head.embedding_dim,
                "start": head.start, "stop": head.stop}
    return {"manifest": manifest, "rows": rows, "replicated": replicated}


def save_shard(directory: str, head: Any, opt: Optional[Any] = None) -> str:
    """Write this rank's shard (temp file, then rename); returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"head_shard_{head.ctx.rank}.pt")
    torch.save(shard_state(head, opt), path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def _check(path: str, man: Dict[str, Any], head: Any) -> None:
    want = {"num_classes": head.num_classes, "sub_centers": head.k, "embedding_dim": head.embedding_dim}
    for key, val in want.items():
        if man.get(key) != val:
            raise ValueError(f"{path}: head checkpoint has {key}={man.get(key)}, this head expects {val}")


def load_shards(paths: List[str], head: Any, opt: Optional[Any] = None) -> None:
    """Fill ``head`` (and ``opt``) from shards written at any world size. ``paths``: every shard."""
    k, filled = head.k, 0
    rows_out: Dict[str, torch.Tensor] = {}
    replicated: Dict[str, Any] = {}
    for path in paths:
        st = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        man = st["manifest"]
        _check(path, man, head)
        a, b = max(man["start"], head.start), min(man["stop"], head.stop)
        replicated = st["replicated"]
        if a >= b:
            continue
        for name, t in st["rows"].items():
            if t.shape[0] != (man["stop"] - man["start"]) * k:
                raise ValueError(f"{path}: '{name}' has {t.shape[0]} rows, manifest range needs "
                                 f"{(man['stop'] - man['start']) * k}")
            dst = rows_out.setdefault(name, torch.empty((head.stop - head.start) * k, *t.shape[1:], dtype=t.dtype))
            dst[(a - head.start) * k:(b - head.start) * k] = t[(a - man["start"]) * k:(b - man["start"]) * k]
        filled += b - a
    if filled != head.stop - head.start:
        raise ValueError(f"head shards {paths} cover {filled} of this rank's {head.stop - head.start} classes "
                         f"[{head.start}, {head.stop})")
    _restore(head, opt, rows_out, replicated)


@torch.no_grad()
def _restore(head: Any, opt: Optional[Any], rows: Dict[str, torch.Tensor], rep: Dict[str, Any]) -> None:
    head.weight.copy_(rows.pop("weight"))
    head.step_count.fill_(int(rep["step_count"]))
    if head.bias is not None:
        head.bias.copy_(rep["bias"])
    if opt is None:
        return
    meta = rep.get("optim.meta")
    if meta is not None and meta["name"] != opt.name:
        raise ValueError(f"head optimizer state is for {meta['name']!r}, this optimizer is {opt.name!r}")
    opt.state = {}
    if rows:
        opt.state["weight"] = {name[len("optim."):]: t.clone() for name, t in rows.items()}
    if rep.get("optim.bias"):
        opt.state["bias"] = {kk: v.clone() for kk, v in rep["optim.bias"].items()}
    if meta is not None:
        opt.skipped = int(meta["skipped"])
