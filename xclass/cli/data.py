"""CLI glue for ``xclass make-data`` and ``xclass validate-data`` (parsing only; logic in the library).

    xclass make-data --task face --num-classes 100 --out data/face [--rows-per-class 20]
        [--test-classes 20] [--seed 0] [--opt image_size=16] [--validate] [--overwrite]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

import yaml

from xclass.data.generate import make_data
from xclass.data.schema import TASK_COLUMNS, TASKS, DataError
from xclass.data.validate import validate_file
from xclass.errors import one_line


def _parse_opts(items: List[str]) -> Dict[str, Any]:
    """``["image_size=16", "noise=0.3"]`` -> ``{"image_size": 16, "noise": 0.3}`` (YAML scalars)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def add_make_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``make-data`` options to ``parser`` (a subcommand parser)."""
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--num-classes", type=int, default=100,
                        help="train classes (face/speaker/quic) or labels (xmc)")
    parser.add_argument("--rows-per-class", type=int, default=None, help="face/speaker/quic (default 20)")
    parser.add_argument("--num-rows", type=int, default=None,
                        help="xmc train documents (default 10*num_classes); others: total train rows")
    parser.add_argument("--test-classes", type=int, default=None,
                        help="held-out classes (default max(2, min(1000, num_classes//5)))")
    parser.add_argument("--test-rows-per-class", type=int, default=None, help="default min(rows_per_class, 10), >= 2")
    parser.add_argument("--num-test-rows", type=int, default=None, help="xmc test documents")
    parser.add_argument("--num-pairs", type=int, default=None, help="face pairs / speaker trials")
    parser.add_argument("--rows-per-file", type=int, default=None, help="split splits into part files")
    parser.add_argument("--row-group-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="task generator option, e.g. image_size=16, max_frames=200, num_packets=30, vocab_size=50000")
    parser.add_argument("--validate", action="store_true", help="validate every written split afterwards")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _validate_outputs(out: str, meta: Dict) -> None:
    task, total = meta["task"], meta["num_classes"] + meta.get("test_classes", 0)
    for split in meta["splits"].values():
        for f in split["files"]:
            validate_file(os.path.join(out, f), task, total)
    from xclass.tasks import get_task

    for name, table in get_task(task).side_tables:  # e.g. xmc: labels.parquet (xmc_labels)
        validate_file(os.path.join(out, table.file), name, meta["num_classes"])


def run_make_data(args: argparse.Namespace) -> int:
    """Run ``make-data``; returns a process exit code (2 on bad arguments or data)."""
    try:
        meta = make_data(args.task, args.out, args.num_classes, rows_per_class=args.rows_per_class,
                         num_rows=args.num_rows, seed=args.seed, test_classes=args.test_classes,
                         test_rows_per_class=args.test_rows_per_class, num_test_rows=args.num_test_rows,
                         num_pairs=args.num_pairs, rows_per_file=args.rows_per_file,
                         row_group_rows=args.row_group_rows, overwrite=args.overwrite,
                         progress=not args.no_progress, **_parse_opts(args.opt))
        if args.validate:
            _validate_outputs(args.out, meta)
    except (ValueError, TypeError, FileExistsError, DataError) as exc:
        print(f"xclass make-data: error: {one_line(exc)}", file=sys.stderr)
        return 2
    counts = {k: v["rows"] for k, v in meta["splits"].items()}
    print(json.dumps({"out": os.path.abspath(args.out), "task": meta["task"], "rows": counts}))
    return 0


def add_validate_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("paths", nargs="+", help="Parquet files")
    parser.add_argument("--task", required=True, choices=list(TASK_COLUMNS),
                        help="a task, or a side table kind (xmc_labels: an XMC labels.parquet)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--allow-empty-labels", action="store_true")
    return parser


def run_validate_data(args: argparse.Namespace) -> int:
    """Validate files; prints one JSON summary per file, returns 1 on the first DataError."""
    for path in args.paths:
        try:
            info = validate_file(path, args.task, args.num_classes,
                                 allow_empty_labels=args.allow_empty_labels)
        except DataError as exc:
            print(f"xclass validate-data: {one_line(exc)}", file=sys.stderr)
            return 1
        print(json.dumps({"file": path, "rows": info["num_rows"], "label_min": info["label_min"],
                          "label_max": info["label_max"]}))
    return 0
