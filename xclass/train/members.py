"""``train.ensemble: K``: one ``xclass train`` trains a deep ensemble of K members.

Each member is a complete, ordinary run of the one training loop, in ``OUT_DIR/member-k``,
with ``train.seed = seed + 1000 k`` (a different initialisation; the data order, ``data.seed``,
is shared) and otherwise the same config. ``OUT_DIR/ensemble.json`` names the members and their
seeds; ``export-index --run OUT_DIR`` reads it and fuses the members' embeddings (or head
vectors) as it fuses runs named one by one (:mod:`xclass.eval.ensemble`): each member's rows
normalised, concatenated and divided by sqrt(K), so a cosine is the mean of the members' cosines;
``export-model --run OUT_DIR`` writes one ONNX model that fuses them the same way in its graph.

Members are trained one after the other (each on all of ``cluster.workers``); a killed ensemble
resumes where it stopped: finished members are complete runs (nothing left to train), the
member in progress resumes from its newest checkpoint. ``train.resume=false`` into a directory
that holds a run or an ensemble is refused, or with ``train.overwrite`` the old one is moved
aside first, as for one run (:mod:`xclass.train.rundir`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from xclass.config_types import ConfigError

#: the manifest of an ensemble run directory
MANIFEST = "ensemble.json"
#: member k trains with ``train.seed + SEED_STRIDE * k``
SEED_STRIDE = 1000


def _read_manifest(run_dir: str) -> Optional[Dict[str, Any]]:
    """``run_dir``'s :data:`MANIFEST` (``members``: sub-directory names, ``seeds``), or None when
    it has none. A malformed manifest is one error naming the file."""
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
        names = doc["members"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) and n and os.sep not in n
                                                            and n not in (".", "..") for n in names)):
            raise ValueError("'members' must be a non-empty list of sub-directory names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not an xclass ensemble manifest ({exc})") from None
    return doc


def read_members(run_dir: str) -> Optional[List[str]]:
    """The member run directories of an ensemble directory (absolute, in order), or None when
    ``run_dir`` holds no :data:`MANIFEST`."""
    doc = _read_manifest(run_dir)
    return None if doc is None else [os.path.join(os.path.abspath(run_dir), n) for n in doc["members"]]


def expand_runs(run_dirs: Sequence[str]) -> List[str]:
    """``--run`` arguments with every ensemble directory replaced by its members."""
    out: List[str] = []
    for r in run_dirs:
        out.extend(read_members(r) or [r])
    return out


def refuse_ensemble(run_dir: str, key: str = "the run") -> None:
    """One error line when ``run_dir`` is an ensemble where one run is needed (``key`` names what
    was given, e.g. ``train.init_from``)."""
    members = read_members(run_dir)
    if members is not None:
        raise ConfigError(f"{key} {run_dir} is an ensemble of {len(members)} runs ({MANIFEST}): name one member "
                          f"({members[0]}); export-index --run and export-model take the whole ensemble")


def member_configs(cfg: Any) -> List[Any]:
    """The K members' configs: ``out_dir/member-k``, ``seed + 1000 k``, ``ensemble = 1``,
    ``resume = true`` (the ensemble directory's own rules are applied once, by
    :func:`run_ensemble`). ``train.init_from`` an ensemble of K members: member k starts from
    member k of it."""
    t = cfg.train
    out = os.path.abspath(t.out_dir)
    inits = [t.init_from] * t.ensemble
    if t.init_from:
        src = read_members(t.init_from)
        if src is not None and len(src) != t.ensemble:
            raise ConfigError(f"train.init_from={t.init_from} is an ensemble of {len(src)} runs and "
                              f"train.ensemble={t.ensemble}: the member counts must match")
        inits = src or inits
    return [dataclasses.replace(cfg, train=dataclasses.replace(
        t, out_dir=os.path.join(out, f"member-{k}"), seed=t.seed + SEED_STRIDE * k, ensemble=1, resume=True,
        overwrite=False, init_from=inits[k])) for k in range(t.ensemble)]


def _prepare(cfg: Any, members: List[Any]) -> bool:
    """The run-directory rules for the ensemble directory, then its manifest naming ``members``
    (their configs, :func:`member_configs`), written atomically; an existing one must name the
    same members and seeds. True when the manifest is new."""
    from xclass.train.rundir import holds_run, move_aside

    t, out = cfg.train, os.path.abspath(cfg.train.out_dir)
    existing = _read_manifest(out)
    if holds_run(out) or (existing is not None and not t.resume):
        if t.resume:
            raise ConfigError(f"train.out_dir={out} holds one run (not an ensemble): train.ensemble={t.ensemble} "
                              "needs a directory of its own, or pass --overwrite with train.resume=false")
        move_aside(out, t.overwrite)
        existing = None
    names = [os.path.basename(m.train.out_dir) for m in members]
    seeds = [m.train.seed for m in members]
    if existing is not None:
        if existing["members"] != names or existing.get("seeds") != seeds:
            raise ConfigError(f"train.out_dir={out} holds an ensemble of {len(existing['members'])} members with "
                              f"seeds {existing.get('seeds')}; train.ensemble={t.ensemble} train.seed={t.seed} would "
                              f"give {seeds}: resume with the same settings or use a new out_dir")
        return False
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"members": names, "seeds": seeds, "seed_stride": SEED_STRIDE}, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(out, MANIFEST))
    return True


def run_ensemble(cfg: Any, train_one: Callable[[Any], Dict[str, Any]],
                 log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train every member with ``train_one`` (the launcher's one-run path); returns the last
    member's final row with ``members``: every member's row, in order. A new ensemble whose first
    member fails before it saved anything (a config or data error) leaves no manifest behind."""
    from xclass.train.rundir import holds_run

    members = member_configs(cfg)   # before the manifest: an init_from mismatch writes nothing
    created = _prepare(cfg, members)
    rows = []
    try:
        for k, m in enumerate(members):
            log(f"[xclass] ensemble member {k + 1}/{len(members)}: train.seed={m.train.seed}, "
                f"run directory {m.train.out_dir}")
            rows.append(train_one(m))
    except BaseException:
        if created and not any(holds_run(m.train.out_dir) for m in members):
            os.remove(os.path.join(os.path.abspath(cfg.train.out_dir), MANIFEST))
        raise
    return dict(rows[-1], members=rows)
