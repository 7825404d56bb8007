"""CLI glue of ``xclass export-index``: embeddings from a trained run (``--run``: encode a split
with its encoder, or ``--head``: the classifier's class vectors; several ``--run``: their fused
embeddings) or from embedding files, then a FAISS index directory. The work is done by
:mod:`xclass.eval.embed`, :mod:`xclass.eval.ensemble` and :mod:`xclass.eval.export`."""
from __future__ import annotations

import argparse
import os

from xclass.cli.evaluate import _check_positive, add_export_args, run_export


def add_export_cli_args(p: argparse.ArgumentParser) -> None:
    """``export-index``: the index options plus ``--run`` (encode a split, or ``--head``)."""
    p.add_argument("--run", action="append", metavar="RUN",
                   help="trained run directory: encode --split with its encoder first; give it again for an "
                        "ensemble, or name a train.ensemble directory (each run's rows normalised and concatenated "
                        "/ sqrt(K): cosines are the mean of the runs' cosines; with --head the runs' class vectors "
                        "fused alike)")
    p.add_argument("--split", default="test", help="dataset split to encode with --run (default test)")
    p.add_argument("--data", default=None,
                   help="with --run: encode this dataset directory instead of the run's own (same task; its "
                        "inputs, e.g. image size or mel bins, must match the run's training data)")
    p.add_argument("--head", action="store_true",
                   help="with --run: export the classifier head's class vectors as the label index")
    p.add_argument("--encode-batch-rows", type=int, default=512,
                   help="with --run: rows per encoder batch (default 512)")
    p.add_argument("--average-last", type=int, default=1, metavar="N",
                   help="with --run: encode with the mean weights of the run's last N checkpoints (default 1: the "
                        "newest only; the run must keep N, see train.keep_last)")
    p.add_argument("--flip-test", action="store_true",
                   help="with --run, face: each embedding is the sum of the image's and its mirror's (insightface's "
                        "flip test)")
    p.add_argument("--bf16", action="store_true",
                   help="with --run: bf16 autocast for the encoder (embeddings are written as float32)")
    add_export_args(p)
    for action in p._actions:  # --embeddings is optional when --run provides them
        if action.dest == "embeddings":
            action.required = False
            action.help = "embedding Parquet file(s)/dirs/globs (or use --run)"
        if action.dest == "gpu":
            action.help = ("--run: encode on the CUDA device; index: GPU faiss when faiss has GPUs "
                           "(falls back to the CPU)")


def run_export_cli(args: argparse.Namespace) -> int:
    """Run ``export-index``; embeddings come from ``--run`` (encoded here) or ``--embeddings``."""
    _check_positive(args, ("hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "pq_bits", "nprobe",
                           "train_size", "shard_rows", "batch_rows", "average_last"))

    if not getattr(args, "run", None) and not getattr(args, "embeddings", None):
        raise FileNotFoundError("export-index needs --run RUN_DIR or --embeddings FILES")
    for flag, given in (("--data", getattr(args, "data", None)), ("--average-last", args.average_last > 1),
                        ("--flip-test", args.flip_test)):
        if given and (not getattr(args, "run", None) or args.head):
            from xclass.config_types import ConfigError

            raise ConfigError(f"{flag} is about the encoder a run encodes with: it needs --run and no --head")
    from xclass.train.members import expand_runs

    runs = expand_runs(getattr(args, "run", None) or [])   # an ensemble directory: its members
    if runs:
        from xclass.eval.embed import embed_split, encode_device, export_head

        out = os.path.abspath(args.out)
        emb = os.path.join(out, f"{args.split}_embeddings.parquet")
        if not args.overwrite and (os.path.exists(os.path.join(out, "manifest.json")) or
                                   (not args.head and os.path.exists(emb))):
            raise FileExistsError(f"{out}: already holds an index or embeddings; pass --overwrite to replace them")
        if len(runs) > 1:
            from xclass.eval.ensemble import check_same_data

            check_same_data(runs, args.data)
        os.makedirs(out, exist_ok=True)
        from xclass.eval.ensemble import embed_ensemble, export_head_ensemble

        if args.head:
            labels_dir = os.path.join(out, "label_embeddings")
            args.embeddings = export_head(runs[0], labels_dir) if len(runs) == 1 else \
                export_head_ensemble(runs, labels_dir)
        else:   # the encoder's device and options only where a split is encoded
            kw = dict(batch_rows=args.encode_batch_rows, data_path=args.data, device=encode_device(args.gpu),
                      bf16=args.bf16, average_last=args.average_last, flip_test=args.flip_test)
            args.embeddings = [embed_split(runs[0], args.split, emb, **kw) if len(runs) == 1 else
                               embed_ensemble(runs, args.split, emb, **kw)]
    return int(run_export(args) or 0)
