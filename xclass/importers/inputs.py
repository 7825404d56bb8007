"""Reading what a user points an importer at: input folders expanded to files, a file's position
among the inputs, and text files (plain or gzip) read line by line with errors that name the line."""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Dict, Iterator, List, Sequence, Tuple

from xclass.data.schema import DataError
from xclass.importers.common import ImportError_


def text_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or .gz), decoded one by one so that a byte that is not
    UTF-8 stops the import naming its line (1-based)."""
    n = 0
    try:
        with (gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")) as f:
            for n, raw in enumerate(f, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"line {n}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)",
                                    file=path) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:        # a damaged or cut .gz
        raise DataError(f"after line {n}: cannot decompress ({exc})", file=path) from None


def first_positions(paths: Sequence[str]) -> Dict[str, int]:
    """{path: its first position in ``paths``}: what a row's ``source_file`` holds (an index into
    meta.json ``source.files``, which lists ``paths`` in order)."""
    out: Dict[str, int] = {}
    for i, p in enumerate(paths):
        out.setdefault(p, i)
    return out


def expand_inputs(inputs: Sequence[str], suffixes: Tuple[str, ...], what: str) -> List[str]:
    """Files as given; a folder is replaced by the files below it (any depth, sorted) whose names
    end with one of ``suffixes``. A folder without such files, or no input at all, is an error."""
    out: List[str] = []
    for path in inputs:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                       if n.lower().endswith(suffixes))
        if not found:
            raise ImportError_(f"{path}: no {what} file in this folder ({', '.join(suffixes)})", file=path)
        out += found
    if not out:
        raise ImportError_(f"no {what} files")
    return out
