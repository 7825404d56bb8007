"""Template-based face verification, as IJB-B / IJB-C compare subjects: a template is a set of
images (stills and video frames, grouped by media), and pairs of templates are verified.

Files, in the benchmark's own text format (whitespace- or comma-separated, ``#`` comments):
- templates (``ijbc_face_tid_mid.txt``): ``image template_id [media_id]`` per line; ``image`` is a
  file name as the dataset's file map (``files.parquet`` of ``xclass import faces``) records it,
  relative to the import's ``--root``;
- template pairs (``ijbc_template_pair_label.txt``): ``template_a template_b label`` (1 = same
  subject, 0 = not).

A template's embedding (insightface's IJB evaluation): every image embedding L2-normalised, the
mean over each media's images (one vector per still, one per video), the SUM of its media vectors,
L2-normalised; a pair's score is the cosine of its two templates.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def _lines(path: str, fields: Tuple[int, int], what: str):
    """(line number, fields) of the non-empty, non-comment lines; a line with too few or too many
    fields is an error naming the file and line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split("#", 1)[0].replace(",", " ").split()
            if not parts:
                continue
            if not fields[0] <= len(parts) <= fields[1]:
                raise ValueError(f"{path}: line {n}: expected {what}, got {line.strip()!r}")
            yield n, parts


def _int(v: str, path: str, n: int, name: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{path}: line {n}: {name} must be an integer, got {v!r}") from None


def read_templates(path: str) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(image names, template ids [n] int64, media ids [n] int64; 0 when the file has none)."""
    names, tids, mids = [], [], []
    for n, p in _lines(path, (2, 3), "'image template [media]'"):
        names.append(p[0])
        tids.append(_int(p[1], path, n, "the template id"))
        mids.append(_int(p[2], path, n, "the media id") if len(p) == 3 else 0)
    if not names:
        raise ValueError(f"{path}: no template lines")
    return names, np.array(tids, np.int64), np.array(mids, np.int64)


def read_template_pairs(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template a [P], template b [P], same [P] bool) of a pair list ``a b 1|0``."""
    a, b, same = [], [], []
    for n, p in _lines(path, (3, 3), "'template_a template_b 1|0'"):
        a.append(_int(p[0], path, n, "a template id"))
        b.append(_int(p[1], path, n, "a template id"))
        if p[2] not in ("0", "1"):
            raise ValueError(f"{path}: line {n}: the label must be 1 (same subject) or 0, got {p[2]!r}")
        same.append(p[2] == "1")
    if not a:
        raise ValueError(f"{path}: no pair lines")
    return np.array(a, np.int64), np.array(b, np.int64), np.array(same, bool)


def template_embeddings(x: np.ndarray, tids: np.ndarray, mids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Image embeddings ``x`` [n, d] (row i: the image of template ``tids[i]``, media ``mids[i]``)
    -> (template ids [T] sorted, unit template embeddings [T, d] float64): per media the mean of
    its unit image rows, per template the sum of its media rows, normalised."""
    order = np.lexsort((mids, tids))                      # by template, then media
    t, m = tids[order], mids[order]
    x = np.asarray(x, np.float64)[order]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    starts = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (m[1:] != m[:-1])])
    media = np.add.reduceat(x, starts) / np.diff(np.r_[starts, len(t)])[:, None]
    t_of_media = t[starts]
    t_starts = np.flatnonzero(np.r_[True, t_of_media[1:] != t_of_media[:-1]])
    tmpl = np.add.reduceat(media, t_starts)
    return t_of_media[t_starts], tmpl / np.maximum(np.linalg.norm(tmpl, axis=1, keepdims=True), 1e-12)


def image_rows(names: List[str], file_map: Dict[str, int], ids: np.ndarray, where: str) -> np.ndarray:
    """Row of each named image in the embeddings (``ids`` [n]): name -> id by the file map, id ->
    row; a name the map lacks, or an id without an embedding, is an error naming it."""
    pos = {int(i): r for r, i in enumerate(ids)}
    rows = np.empty(len(names), np.int64)
    for k, name in enumerate(names):
        if name not in file_map:
            raise ValueError(f"{where}: image {name!r} (entry {k + 1}) is not in the file map")
        i = file_map[name]
        if i not in pos:
            raise ValueError(f"{where}: image {name!r} is row id {i}, which the embeddings do not hold")
        rows[k] = pos[i]
    return rows


def template_scores(t_ids: np.ndarray, feats: np.ndarray, a: np.ndarray, b: np.ndarray, where: str) -> np.ndarray:
    """Cosine [P] of template pairs (ids ``a``, ``b``); a template no image belongs to is an error."""
    pa_, pb_ = np.searchsorted(t_ids, a), np.searchsorted(t_ids, b)
    for p, t in ((pa_, a), (pb_, b)):
        bad = (p >= len(t_ids)) | (t_ids[np.minimum(p, len(t_ids) - 1)] != t)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: pair {k + 1} names template {int(t[k])}, which has no image in the template file")
    from xclass.eval.scorenorm import pair_dots

    return pair_dots(feats, pa_, pb_)
