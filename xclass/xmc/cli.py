"""Command-line glue of the XMC tools: ``python -m xclass.xmc.cli <command> ...``.

  import-wordnet --out DIR [--wordnet-dir /usr/share/wordnet] [--test-fraction 0.1]
  import-xc --out DIR --train train.txt --test test.txt [--train-labels Y --test-labels Y]
            [--label-text Y.txt] [--label-features lbl_X_Xf.txt]
  tfidf --data DIR [--k 50] [--ks 1,3,5]
  evaluate --run RUN [--run RUN2 ...] --work DIR [--tfidf]   (one JSON object per line)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional


def _ks(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x]


def add_wordnet_args(w: argparse.ArgumentParser) -> None:
    w.add_argument("--out", required=True)
    w.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    w.add_argument("--test-fraction", type=float, default=0.1)
    w.add_argument("--overwrite", action="store_true")


def add_xc_args(x: argparse.ArgumentParser) -> None:
    for a in ("--out", "--train", "--test"):
        x.add_argument(a, required=True)
    for a in ("--train-labels", "--test-labels", "--label-text", "--label-features"):
        x.add_argument(a, default=None)
    x.add_argument("--overwrite", action="store_true")


def add_tfidf_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", required=True)
    t.add_argument("--k", type=int, default=50)
    t.add_argument("--ks", type=_ks, default=[1, 3, 5])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xclass.xmc.cli", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    add_wordnet_args(sub.add_parser("import-wordnet", help="WordNet 3.0 (wordnet-base) -> XMC dataset"))
    add_xc_args(sub.add_parser("import-xc", help="Extreme Classification Repository files -> XMC dataset"))
    add_tfidf_args(sub.add_parser("tfidf", help="TF-IDF kNN baseline metrics of a dataset"))
    e = sub.add_parser("evaluate", help="metrics of trained runs (+ the TF-IDF baseline on their data)")
    e.add_argument("--run", action="append", required=True)
    e.add_argument("--work", required=True)
    e.add_argument("--ks", type=_ks, default=[1, 3, 5])
    e.add_argument("--tfidf", action="store_true")
    return p


def _tfidf(data: str, ks, k: int = 50) -> dict:
    from xclass.xmc.tfidf import tfidf_knn_baseline

    from xclass.data.schema import DataError
    from xclass.train.setup import load_meta

    meta = load_meta(data)
    if meta.get("task") != "xmc" or not isinstance(meta.get("num_classes"), int):
        raise DataError(f"task is {meta.get('task')!r}; tfidf-baseline needs an XMC dataset (task 'xmc' with "
                        "num_classes)", file=os.path.join(data, "meta.json"))
    n = int(meta["num_classes"])
    t0 = time.perf_counter()
    out = tfidf_knn_baseline(os.path.join(data, "train.parquet"), os.path.join(data, "test.parquet"), n, ks, k=k)
    return {"method": "tfidf_knn", "data": data, "seconds": round(time.perf_counter() - t0, 1), **out}


def main(argv: Optional[List[str]] = None) -> int:
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Dispatch on ``args.cmd`` (import-wordnet, import-xc, tfidf, evaluate)."""
    if args.cmd == "import-wordnet":
        from xclass.xmc.wordnet import import_wordnet

        meta = import_wordnet(args.out, args.wordnet_dir, args.test_fraction, overwrite=args.overwrite)
        print(json.dumps({"out": args.out, "num_classes": meta["num_classes"],
                          "rows": {k: v["rows"] for k, v in meta["splits"].items()}}))
    elif args.cmd == "import-xc":
        from xclass.xmc.xcformat import import_xc

        meta = import_xc(args.out, args.train, args.test, train_labels=args.train_labels,
                         test_labels=args.test_labels, label_text=args.label_text,
                         label_features=args.label_features, overwrite=args.overwrite)
        print(json.dumps({"out": args.out, "num_classes": meta["num_classes"]}))
    elif args.cmd == "tfidf":
        print(json.dumps(_tfidf(args.data, args.ks, args.k)))
    else:
        from xclass.export import load_run
        from xclass.xmc.evaluate import evaluate_run

        for run in args.run:
            cfg = load_run(run)
            out = evaluate_run(run, os.path.join(args.work, os.path.basename(os.path.normpath(run))), args.ks)
            print(json.dumps({"method": cfg.head.name, "run": run, **out}), flush=True)
        if args.tfidf:
            print(json.dumps(_tfidf(load_run(args.run[0]).data.path, args.ks)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
