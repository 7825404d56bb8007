"""The hardest cases of an evaluation, to look at: for verification the impostor (non-target) pairs
that score highest and the genuine (target) pairs that score lowest; for identification the most
confident wrong 1-NN answers. Each with the input files when the dataset has a file map
(``files.parquet``, written by ``import faces`` / ``import audio``)."""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

#: columns of hardest_pairs.csv
COLUMNS = ("kind", "rank", "score", "a", "b", "a_path", "b_path")


def read_file_map(path: str) -> Dict[int, str]:
    """id -> input file of a dataset's files.parquet (``id``, ``path``)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path, columns=["id", "path"]).to_pydict()
    except Exception as exc:  # noqa: BLE001 - a missing column or an unreadable file, named
        raise ValueError(f"{path}: not a file map with columns id, path ({exc})") from None
    return dict(zip(t["id"], t["path"]))


def file_map_beside(pairs: str, given: Optional[str] = None) -> Optional[str]:
    """The file map to use: ``given``, else the files.parquet beside the pairs / trials file."""
    if given:
        return given
    near = os.path.join(os.path.dirname(os.path.abspath(pairs)), "files.parquet")
    return near if os.path.exists(near) else None


def hardest_pairs(a: np.ndarray, b: np.ndarray, scores: np.ndarray, target: np.ndarray, n: int,
                  paths: Optional[Dict[int, str]] = None) -> List[dict]:
    """Rows (see COLUMNS) of the ``n`` highest-scoring impostor pairs ("impostor, high score") and
    the ``n`` lowest-scoring genuine pairs ("genuine, low score"); ties keep file order. ``a``,
    ``b`` [P] row ids, ``scores`` [P], ``target`` [P] bool."""
    paths = paths or {}
    rows = []
    for kind, idx in (("impostor, high score", np.flatnonzero(~target)), ("genuine, low score", np.flatnonzero(target))):
        order = idx[np.argsort(-scores[idx] if kind.startswith("impostor") else scores[idx], kind="stable")][:n]
        for rank, i in enumerate(order, 1):
            ia, ib = int(a[i]), int(b[i])
            rows.append({"kind": kind, "rank": rank, "score": round(float(scores[i]), 6), "a": ia, "b": ib,
                         "a_path": paths.get(ia, ""), "b_path": paths.get(ib, "")})
    return rows


def to_csv(rows: List[dict], columns: Sequence[str] = COLUMNS) -> str:
    """CSV text of ``rows`` (hardest_pairs.csv's COLUMNS, or QUERY_COLUMNS)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: List[dict], show: int = 5) -> List[str]:
    """The first ``show`` rows of each kind as a Markdown table (paths when known, else ids)."""
    out = ["## Hardest pairs", "", "Full list: `hardest_pairs.csv`.", "",
           "| kind | rank | score | a | b |", "|---|---|---|---|---|"]
    cell = lambda path, i: (str(path) or str(i)).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    for r in rows:
        if r["rank"] <= show:
            out.append(f"| {r['kind']} | {r['rank']} | {r['score']:.4f} | {cell(r['a_path'], r['a'])} | "
                       f"{cell(r['b_path'], r['b'])} |")
    return out + [""]


#: columns of hardest_queries.csv (identification)
QUERY_COLUMNS = ("rank", "score", "query", "query_label", "nearest", "nearest_label", "query_path", "nearest_path")
