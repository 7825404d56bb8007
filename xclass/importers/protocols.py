"""Published verification protocols as the test split of an import: LFW's ``pairs.txt`` and trial
lists (VoxCeleb ``veri_test2.txt``, Kaldi / WeSpeaker ``.kaldi`` trials, ``a b 0|1`` pair lists).

``import faces --pairs-file`` / ``import audio --trials`` read one of these instead of drawing
pairs: the files it names are the test split, in its own pairs, and the classes they belong to
are held out of training (:func:`protocol_splits`). Formats, told apart line by line:

- LFW (first line one or two integers): ``S N`` = S folds of N matched then N mismatched pairs
  (View 2 ``pairs.txt``: ``10 300``), or ``N`` = N matched then N mismatched (``pairsDevTest``).
  Matched: ``name i j``; mismatched: ``name1 i name2 j``; image i of ``name`` is the file
  ``name/name_000i`` with any image extension. With S folds each pair keeps its fold, and the
  10-fold accuracy of ``evaluate`` uses them.
- Three fields: ``1|0 a b`` (VoxCeleb) or ``a b target|nontarget|1|0`` (Kaldi, WeSpeaker, CFP-style
  lists); ``a`` and ``b`` are paths relative to the import root (with or without extension).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from xclass.importers.common import ImportError_, Item, assign_splits
from xclass.importers.inputs import text_lines

_LABELS = {"1": True, "0": False, "target": True, "nontarget": False}


@dataclass(frozen=True)
class ProtocolPair:
    """One pair of a protocol file: two file keys (relative paths), same class, fold (-1: none),
    and the 1-based line it came from."""

    a: str
    b: str
    same: bool
    fold: int
    line: int


def read_protocol(path: str) -> List[ProtocolPair]:
    """The pairs of an LFW pairs file or a trial list (module doc); a malformed line is an
    ImportError_ naming the file and line."""
    lines = [(n, ln.split()) for n, ln in enumerate(text_lines(path), start=1) if ln.strip()]
    if not lines:
        raise ImportError_(f"{path}: no pairs in this file", file=path)
    head = lines[0][1]
    if 1 <= len(head) <= 2 and all(f.isascii() and f.isdigit() for f in head):
        pairs = _lfw(path, lines)
    else:
        pairs = [_trial(path, n, f) for n, f in lines]
    if not pairs:
        raise ImportError_(f"{path}: no pairs in this file", file=path)
    return pairs


def _trial(path: str, n: int, f: List[str]) -> ProtocolPair:
    if len(f) == 3 and f[-1].lower() in _LABELS:
        return ProtocolPair(f[0], f[1], _LABELS[f[-1].lower()], -1, n)
    if len(f) == 3 and f[0] in ("0", "1"):
        return ProtocolPair(f[1], f[2], f[0] == "1", -1, n)
    raise ImportError_(f"{path} line {n}: expected 'a b target|nontarget|1|0' or '1|0 a b', got "
                       f"{' '.join(f)[:120]!r}", file=path)


def _lfw(path: str, lines: List[Tuple[int, List[str]]]) -> List[ProtocolPair]:
    head = [int(v) for v in lines[0][1]]
    sets, per = (1, head[0]) if len(head) == 1 else head
    body = lines[1:]
    if len(body) != sets * 2 * per:
        raise ImportError_(f"{path}: the header says {sets} x (2 x {per}) pairs, the file has {len(body)} "
                           "pair lines", file=path)
    out = []
    for k, (n, f) in enumerate(body):
        try:
            if len(f) == 3:
                a, b = _lfw_key(f[0], f[1]), _lfw_key(f[0], f[2])
            elif len(f) == 4:
                a, b = _lfw_key(f[0], f[1]), _lfw_key(f[2], f[3])
            else:
                raise ValueError
        except ValueError:
            raise ImportError_(f"{path} line {n}: expected 'name i j' or 'name1 i name2 j', got "
                               f"{' '.join(f)[:120]!r}", file=path) from None
        out.append(ProtocolPair(a, b, len(f) == 3, k // (2 * per) if len(head) == 2 else -1, n))
    return out


def _lfw_key(name: str, index: str) -> str:
    return f"{name}/{name}_{int(index):04d}"


def resolve(pairs: List[ProtocolPair], items: List[Item], root: str, path: str) -> List[Tuple[int, int]]:
    """Item indexes (a, b) of every pair: a key names a file by its path relative to ``root``
    (``/`` separators), with or without its extension. A key that names no file, or two, is an
    ImportError_ naming the protocol file and line."""
    exact: Dict[str, int] = {}
    stems: Dict[str, Optional[int]] = {}
    for i, it in enumerate(items):
        rel = os.path.relpath(it.path, root).replace(os.sep, "/")
        exact[rel] = i
        stem = os.path.splitext(rel)[0]
        stems[stem] = i if stem not in stems else None      # None: two files share the stem

    def find(key: str, line: int) -> int:
        key = key.replace("\\", "/")
        key = key[2:] if key.startswith("./") else key
        if key in exact:
            return exact[key]
        i = stems.get(key, -1)
        if i is None:
            raise ImportError_(f"{path} line {line}: {key!r} matches two files under {root}; name it with its "
                               "extension", file=path)
        if i < 0:
            raise ImportError_(f"{path} line {line}: {key!r} is not a file under {root} (of the importer's "
                               "extensions)", file=path)
        return i

    return [(find(p.a, p.line), find(p.b, p.line)) for p in pairs]


def protocol_splits(items: List[Item], pairs: List[ProtocolPair], idx: List[Tuple[int, int]],
                    path: str) -> Tuple[List[str], List[str], List[Item], List[Tuple[int, int]]]:
    """Splits from a protocol: the files it names are the test split; the classes they belong to
    are held out (labels ``[C, C + T)`` after the C training classes, as ``--test-classes``), and
    their other files are left out; every other file trains. Checks each pair's kind against the
    files' classes. Returns (train class names, test class names, the items to import, each
    pair's positions in that list)."""
    for p, (i, j) in zip(pairs, idx):
        if (items[i].label_name == items[j].label_name) != p.same:
            kind = "same-class" if p.same else "different-class"
            raise ImportError_(f"{path} line {p.line}: a {kind} pair, but {items[i].path} is class "
                               f"{items[i].label_name!r} and {items[j].path} is {items[j].label_name!r}", file=path)
    named: Set[int] = {k for ij in idx for k in ij}
    held = sorted({items[k].label_name for k in named})
    train = sorted({it.label_name for it in items} - set(held))
    index = {n: i for i, n in enumerate(train + held)}
    keep: List[Item] = []
    pos: Dict[int, int] = {}
    for k, it in enumerate(items):
        if k in named or it.label_name not in held:
            it.label, it.split = index[it.label_name], ("test" if k in named else "train")
            pos[k] = len(keep)
            keep.append(it)
    return train, held, keep, [(pos[i], pos[j]) for i, j in idx]


def protocol_table(pairs: List[ProtocolPair], positions: List[Tuple[int, int]],
                   row_of: Dict[int, int]) -> Dict[str, np.ndarray]:
    """The pairs file's columns (a, b, same; ``fold`` when the protocol has folds) in protocol
    order, from each pair's item positions and ``row_of`` (item position -> its test row id)."""
    out = {"a": np.array([row_of[i] for i, _ in positions], np.int64),
           "b": np.array([row_of[j] for _, j in positions], np.int64),
           "same": np.array([p.same for p in pairs], bool)}
    if pairs and pairs[0].fold >= 0:
        out["fold"] = np.array([p.fold for p in pairs], np.int64)
    return out


@dataclass
class SplitPlan:
    """What an importer imports: class names, the items in row order, and (with a protocol
    file) its pairs and their item positions."""

    train_names: List[str]
    test_names: List[str]
    items: List[Item]
    pairs: Optional[List[ProtocolPair]] = None
    positions: Optional[List[Tuple[int, int]]] = None
    file: str = ""

    def table(self, row_of: Dict[int, int]) -> Optional[Dict[str, np.ndarray]]:
        """The protocol's pairs in row ids (:func:`protocol_table`); None without a protocol."""
        return None if self.pairs is None else protocol_table(self.pairs, self.positions or [], row_of)


def plan_splits(items: List[Item], root: str, protocol_file: Optional[str], flag: str, *, test_classes: int = 0,
                test_regex: Optional[str] = None, seed: int = 0, test_only: bool = False) -> SplitPlan:
    """The splits of an import: from ``protocol_file`` (``flag`` names its option in errors; it
    sets the test split, so --test-classes / --test-regex are refused with it), else
    :func:`~xclass.importers.common.assign_splits`."""
    if not protocol_file:
        train, test = assign_splits(items, test_classes=test_classes, test_regex=test_regex, seed=seed,
                                    test_only=test_only)
        return SplitPlan(train, test, items)
    if test_classes or test_regex or test_only:
        raise ImportError_(f"{flag} sets the test split: leave out --test-classes, --test-regex and --test-only")
    pairs = read_protocol(protocol_file)
    train, test, keep, positions = protocol_splits(items, pairs, resolve(pairs, items, root, protocol_file),
                                                   protocol_file)
    return SplitPlan(train, test, keep, pairs, positions, os.path.abspath(protocol_file))
