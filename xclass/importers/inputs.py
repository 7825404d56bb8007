"""Reading what a user points an importer at: input folders expanded to files, a file's position
among the inputs, text files (plain or gzip) read line by line with errors that name the line,
and files decoded in worker processes (:func:`decode_in_order`)."""
from __future__ import annotations

import gzip
import os
import zlib
from itertools import islice
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

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


_DECODE: List[Callable[[Any], Any]] = []


def _init_worker(fn: Callable[[Any], Any]) -> None:
    _DECODE[:] = [fn]


def _decode(arg: Any) -> Any:
    return _DECODE[0](arg)


#: thread pools of the numeric libraries, one thread per worker process (N workers each running
#: a core-wide BLAS pool oversubscribe the cores: 2 workers were slower than 1 on 2 cores)
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def decode_in_order(fn: Callable[[Any], Any], args: Iterable[Any], workers: int = 1,
                    chunksize: int = 32) -> Iterator[Any]:
    """``fn(a)`` for each ``a`` of ``args``, in order: in this process (``workers`` <= 1) or in a
    pool of ``workers`` spawned processes with one numeric-library thread each, each given ``fn``
    once (its tables, e.g. a landmarks CSV, are not sent again with every file). An exception
    raised by ``fn`` in a worker is raised here, at its file's turn. ``fn`` must be picklable (a
    module-level function or a ``functools.partial`` of one), and a script that calls this with
    workers must guard its entry point (``if __name__ == "__main__":``), as for any spawn pool."""
    if workers <= 1:
        yield from map(fn, args)
        return
    import multiprocessing

    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update({k: "1" for k in _ONE_THREAD})     # inherited by the workers as they start
    try:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(fn,))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pool:
        todo = iter(args)
        while True:       # a window at a time: imap alone would read every input ahead into its queue
            window = list(islice(todo, 4 * workers * chunksize))
            if not window:
                return
            yield from pool.imap(_decode, window, chunksize)
