"""argparse front ends for ``xclass export-index`` and ``xclass evaluate``.

Plain-Python entry points (what the CLI calls):

* :func:`xclass.eval.export.export_index` ``(sources, out_dir, spec, ...) -> manifest``
* :func:`xclass.eval.searcher.ShardedIndex.open` ``(dir, ...)`` -> ``.search(q, k)``
* :func:`xclass.eval.evaluate.evaluate_xmc` / ``evaluate_verification`` / ``evaluate_identification``
* :func:`xclass.eval.report.write_report`, :func:`xclass.eval.report.print_table`

``run_export(args)`` / ``run_evaluate(args)`` return 0 on success and 2 on bad input or a bad
index (the message, naming file/column/row, goes to stderr); ``args`` can be any namespace
with the attributes :func:`add_export_args` / :func:`add_evaluate_args` define.
"""
from __future__ import annotations

import argparse
import os
import sys

from xclass.errors import one_line


def _ints(text: str):
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", nargs="+", required=True,
                   help="embedding Parquet file(s), directories or globs (id, embedding)")
    p.add_argument("--out", required=True, help="output index directory")
    p.add_argument("--index-type", default="flat", choices=["flat", "hnsw", "ivfpq", "ivfflat"])
    p.add_argument("--index-factory", default=None, metavar="STRING",
                   help="any faiss index_factory string instead of --index-type (e.g. 'OPQ16_64,IVF4096,PQ16'); "
                        "trained on --train-size vectors; --nprobe / --ef-search apply at search time")
    p.add_argument("--metric", default="cosine", choices=["cosine", "ip", "l2"])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--pq-m", type=int, default=16)
    p.add_argument("--pq-bits", type=int, default=8)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--shard-rows", type=int, default=None,
                   help="max vectors per index shard (default: one shard per input file)")
    p.add_argument("--batch-rows", type=int, default=65536)
    p.add_argument("--gpu", action="store_true", help="use GPU faiss when available")
    p.add_argument("--overwrite", action="store_true")


def _spec(args):
    from xclass.eval.index import IndexSpec
    factory = getattr(args, "index_factory", None) or ""
    return IndexSpec(kind="factory" if factory else args.index_type, metric=args.metric, hnsw_m=args.hnsw_m,
                     ef_construction=args.ef_construction, ef_search=args.ef_search,
                     nlist=args.nlist, pq_m=args.pq_m, pq_bits=args.pq_bits, nprobe=args.nprobe,
                     train_size=args.train_size, factory=factory)


def _guard(fn, args) -> int:
    try:
        return fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError) as exc:
        print(f"xclass: error: {one_line(exc)}", file=sys.stderr)
        return 2


def run_export(args) -> int:
    return _guard(_run_export, args)


def _check_positive(args, names) -> None:
    """Index and batching sizes must be >= 1 (faiss aborts the process on 0)."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            from xclass.config_types import ConfigError

            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _run_export(args) -> int:
    from xclass.eval.export import export_index
    _check_positive(args, ("hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "pq_bits", "nprobe",
                           "train_size", "shard_rows", "batch_rows"))
    man = export_index(args.embeddings, args.out, _spec(args), batch_rows=args.batch_rows,
                       shard_rows=args.shard_rows, use_gpu=args.gpu, overwrite=args.overwrite)
    print(f"exported {man['ntotal']} vectors (d={man['dim']}, {man['spec']['kind']}, "
          f"{man['metric']}) into {len(man['shards'])} shard(s) at {args.out}")
    return 0


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    from xclass.eval import PROTOCOLS

    p.add_argument("--protocol", required=True, choices=list(PROTOCOLS))
    p.add_argument("--index", help="exported index directory (xmc, ident)")
    p.add_argument("--queries", help="query embedding Parquet with label/labels (xmc, ident)")
    p.add_argument("--embeddings", help="embedding Parquet for face/speaker pairs")
    p.add_argument("--pairs", help="face pairs Parquet (a, b, same) or speaker trials (enroll, test, target)")
    p.add_argument("--gallery", help="gallery embedding Parquet with 'label' (ident); a directory or glob of them "
                                     "too, e.g. the label_embeddings/ of export-index --head (a file per rank)")
    p.add_argument("--out", default=None, help="report directory (metrics.json, summary.md, PNGs)")
    p.add_argument("--ks", type=_ints, default=(1, 3, 5), help="e.g. 1,3,5,10,100")
    p.add_argument("--train-labels", help="training Parquet (labels) for propensities (PSP)")
    p.add_argument("--label-counts", default=None,
                   help="xmc PSP: training label counts instead of --train-labels' (text: line i = count of "
                        "label i, or a Parquet with label_id, train_count such as an XMC labels.parquet)")
    p.add_argument("--propensity-n", type=int, default=None,
                   help="xmc PSP: N of the propensity formula (rows of the full training set; default: "
                        "the rows of --train-labels)")
    p.add_argument("--rankings", default=None,
                   help="xmc / ident: write the rankings Parquet here (id, labels = top-K label ids, scores; "
                        "ident: the labels of the K nearest gallery rows, labels[0] the 1-NN prediction). "
                        "Default OUT/rankings.parquet with --out; must not exist")
    p.add_argument("--prop-a", type=float, default=0.55)
    p.add_argument("--prop-b", type=float, default=1.5)
    p.add_argument("--filter", dest="filter_file", help="'row label' pairs removed before ranking")
    p.add_argument("--empty-rows", default="keep", choices=["keep", "drop"])
    p.add_argument("--allow-unindexed-labels", action="store_true",
                   help="xmc: accept query label ids the index does not hold (scored as misses)")
    p.add_argument("--cohort", help="speaker/face: cohort embedding Parquet (id, embedding) for AS-norm")
    p.add_argument("--asnorm-top", type=int, default=300,
                   help="AS-norm: cohort scores kept per side (top-N), default 300")
    p.add_argument("--templates", default=None, metavar="TXT",
                   help="face: template verification (IJB-B / IJB-C): lines 'image template [media]'; --pairs is "
                        "then the template pair list 'a b 1|0' and --file-map the image dataset's files.parquet")
    p.add_argument("--file-map", default=None,
                   help="the dataset's files.parquet (id -> input file) for the hardest pairs / queries in the "
                        "report; face/speaker default: the one beside --pairs, when there is one")
    p.add_argument("--hardest", type=int, default=20,
                   help="face/speaker: the N highest-scoring impostor and N lowest-scoring genuine pairs go to "
                        "OUT/hardest_pairs.csv; ident: the N most confident wrong 1-NN answers to "
                        "OUT/hardest_queries.csv (0: none)")
    p.add_argument("--open-set-softmax", type=float, default=None, metavar="S",
                   help="ident: score each query for the open-set metrics by the share of the softmax weights "
                        "exp(S * similarity) of its K nearest gallery rows that falls on the 1-NN's label, instead "
                        "of the 1-NN similarity; with the head's class vectors as the gallery (export-index --run "
                        "--head) and S the head's scale, the classifier's largest class probability")
    p.add_argument("--ensemble-mean-prob", action="store_true",
                   help="ident, with --open-set-softmax, on files fused from several runs (export-index --run A "
                        "--run B ...): score by the mean of the runs' own softmax shares (a deep ensemble) instead "
                        "of the softmax of their mean similarity")
    p.add_argument("--majority-k", type=int, default=5)
    p.add_argument("--batch-rows", type=int, default=4096)
    p.add_argument("--ef-search", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--gpu", action="store_true",
                   help="search on the GPU: faiss' GPU index when faiss has GPUs, else (flat indexes) an "
                        "exact torch top-k on the CUDA device, else the CPU")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_evaluate(args) -> int:
    return _guard(_run_evaluate, args)


def _need(args, *names):
    missing = [n for n in names if not getattr(args, n, None)]
    if missing:
        raise ValueError(f"protocol {args.protocol!r} needs --{', --'.join(m.replace('_', '-') for m in missing)}")


def _rankings_path(args):
    """--rankings (refused when the file exists), else OUT/rankings.parquet with --out (replaced
    with the rest of the report), else None."""
    path = getattr(args, "rankings", None)
    if path and os.path.exists(path):
        raise FileExistsError(f"{path} exists (rankings are never overwritten; remove it first)")
    return path or (os.path.join(args.out, "rankings.parquet") if args.out else None)


def _open_index(args):
    from xclass.eval.searcher import ShardedIndex
    return ShardedIndex.open(args.index, use_gpu=args.gpu, ef_search=args.ef_search,
                             nprobe=args.nprobe)


def _verification(args, header: dict):
    """(metrics, curves) of a face / speaker run; ``header`` gets its inputs. The hardest pairs
    (with files when a file map is found) go into the curves for the report."""
    from xclass.eval import evaluate as ev
    from xclass.eval.hardest import file_map_beside, hardest_pairs, read_file_map

    _need(args, "embeddings", "pairs")
    hardest = getattr(args, "hardest", 20)
    cohort, top = getattr(args, "cohort", None), getattr(args, "asnorm_top", 300)
    templates = getattr(args, "templates", None)
    if templates:
        if args.protocol != "face" or cohort or not getattr(args, "file_map", None):
            raise ValueError("--templates is for --protocol face, needs --file-map (the image dataset's "
                             "files.parquet) and takes no --cohort")
        metrics, curves = ev.evaluate_templates(args.embeddings, templates, args.pairs, args.file_map)
        fmap = None                                  # the pairs name templates, not files
    else:
        metrics, curves = ev.evaluate_verification(args.embeddings, args.pairs, args.protocol,
                                                   cohort=cohort, asnorm_top=top)
        fmap = file_map_beside(args.pairs, getattr(args, "file_map", None))
    if args.out and hardest:
        curves["hardest"] = hardest_pairs(curves["a"], curves["b"], curves["scores"], curves["target"],
                                          hardest, read_file_map(fmap) if fmap else None)
    header.update({"embeddings": args.embeddings, "pairs": args.pairs, "templates": templates,
                   "file_map": getattr(args, "file_map", None) if templates else fmap,
                   "score": f"AS-norm(top {top}) cosine" if cohort else "cosine",
                   "cohort": cohort,
                   "dcf": "C_miss=C_fa=1" if args.protocol == "speaker" else None})
    return metrics, curves


def _run_evaluate(args) -> int:
    from xclass.eval import VERIFICATION_PROTOCOLS, evaluate as ev
    from xclass.eval.report import print_table, write_report
    _check_positive(args, ("batch_rows", "ef_search", "nprobe", "majority_k", "asnorm_top"))
    if getattr(args, "hardest", 0) < 0:
        raise ValueError(f"--hardest must be >= 0, got {args.hardest}")
    soft = getattr(args, "open_set_softmax", None)
    if soft is not None and (args.protocol != "ident" or not 0 < soft < float("inf")):
        raise ValueError(f"--open-set-softmax is a finite scale > 0 for --protocol ident, got {soft} with "
                         f"--protocol {args.protocol}")
    if getattr(args, "ensemble_mean_prob", False) and soft is None:
        raise ValueError("--ensemble-mean-prob averages the runs' softmax shares: it needs --open-set-softmax S")
    for name in ("prop_a", "prop_b"):
        if not 0 <= getattr(args, name, 0) < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(args, name)}")
    header = {"protocol": args.protocol}
    curves, errors = None, []
    rankings = _rankings_path(args) if args.protocol in ("xmc", "ident") else None
    if args.protocol == "xmc":
        _need(args, "index", "queries")
        index = _open_index(args)
        n_labels = max(sh["id_max"] for sh in index.manifest["shards"]) + 1
        inv = ev.xmc_propensity(n_labels, args.train_labels, getattr(args, "label_counts", None),
                                getattr(args, "propensity_n", None), args.prop_a, args.prop_b)
        filt = ev.read_filter(args.filter_file) if args.filter_file else None
        metrics = ev.evaluate_xmc(index, args.queries, args.ks, inv_prop=inv, filter_pairs=filt,
                                  batch_rows=args.batch_rows, empty_rows=args.empty_rows,
                                  progress=not args.quiet,
                                  check_labels=not getattr(args, "allow_unindexed_labels", False),
                                  rankings_out=rankings)
        header.update({"index": args.index, "index_type": index.spec.kind, "queries": args.queries,
                       "propensity_A_B": [args.prop_a, args.prop_b] if inv is not None else None,
                       "propensity_N": getattr(args, "propensity_n", None),
                       "label_counts": getattr(args, "label_counts", None), "rankings": rankings,
                       "filter_file": args.filter_file, "empty_rows": args.empty_rows})
    elif args.protocol in VERIFICATION_PROTOCOLS:
        metrics, curves = _verification(args, header)
    else:
        metrics, errors, curves = _identification(args, header, rankings)
    print_table(metrics, f"{args.protocol} metrics")
    if args.out:
        files = write_report(args.out, metrics, header, curves, plots=not args.no_plots, query_errors=errors)
        print(f"report written to {os.path.abspath(args.out)} ({len(files['plots'])} plots)")
    return 0


def _identification(args, header: dict, rankings):
    """(metrics, the most confident wrong 1-NN answers with their files when --file-map is given,
    {"open_set": curve} for the report's plot when some queries have no gallery class, else None)."""
    from xclass.eval import evaluate as ev
    from xclass.eval.hardest import read_file_map

    _need(args, "index", "queries", "gallery")
    n, soft = getattr(args, "hardest", 20), getattr(args, "open_set_softmax", None)
    fmap = read_file_map(args.file_map) if getattr(args, "file_map", None) else {}
    errors: list = []
    curve: dict = {}
    from xclass.eval.ensemble import paired_dims

    dims = paired_dims(args.queries, args.gallery) if getattr(args, "ensemble_mean_prob", False) else None
    metrics = ev.evaluate_identification(_open_index(args), args.gallery, args.queries, args.ks, args.majority_k,
                                         args.batch_rows, progress=not args.quiet, rankings_out=rankings,
                                         errors_out=errors if args.out and n else None, n_errors=n,
                                         softmax_scale=soft, curve_out=curve, ensemble_dims=dims)
    for e in errors:
        e["query_path"], e["nearest_path"] = fmap.get(e["query"], ""), fmap.get(e["nearest"], "")
    header.update({"index": args.index, "gallery": args.gallery, "queries": args.queries, "rankings": rankings,
                   "open_set_score": (f"mean of {len(dims)} runs' softmax shares, scale {soft}" if dims else
                                      f"softmax share, scale {soft}" if soft else "1-NN similarity"),
                   "file_map": getattr(args, "file_map", None)})
    return metrics, errors, ({"open_set": curve} if curve else None)


def main(argv=None) -> int:
    """Standalone entry: ``python -m xclass.cli.evaluate {export-index,evaluate} ...``."""
    ap = argparse.ArgumentParser(prog="xclass-eval")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_export_args(sub.add_parser("export-index"))
    add_evaluate_args(sub.add_parser("evaluate"))
    args = ap.parse_args(argv)
    return run_export(args) if args.cmd == "export-index" else run_evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
