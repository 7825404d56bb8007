"""``xclass`` command line: make-data, train, export-index, export-model, evaluate, demo.

Thin: parses arguments, loads the config, calls the library. Heavy imports happen inside
each subcommand so ``xclass --help`` is fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (see configs/); defaults if omitted")
    p.add_argument("--workers", "-n", type=int, default=None,
                   help="training processes; >1 (or --address) runs on Ray workers "
                        "(default: cluster.workers from the config)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (cluster.use_gpu=true)")
    p.add_argument("--overwrite", action="store_true",
                   help="with train.resume=false: move an existing run in train.out_dir aside first")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.lr=0.05 head.margin=cosface")


def _cmd_train(args: argparse.Namespace) -> int:
    from xclass.config import describe, load_config

    if args.help_config:
        print("\n".join(describe()))
        return 0
    extra = list(args.overrides)
    if args.workers is not None:
        extra.append(f"cluster.workers={args.workers}")
    if args.address is not None:
        extra.append(f"cluster.address={args.address}")
    if args.gpu:
        extra += ["cluster.use_gpu=true", "cluster.backend=nccl"]
    if args.overwrite:
        extra.append("train.overwrite=true")
    cfg = load_config(args.config, extra)
    from xclass.launcher import run_training

    result = run_training(cfg)
    if "members" in result:
        done = sum("loss" in r for r in result["members"])
        print(f"[xclass] ensemble of {len(result['members'])} members ({done} trained now, the others already "
              f"complete); export-index --run {os.path.abspath(cfg.train.out_dir)} fuses them")
        return 0
    if "loss" not in result:  # nothing left to train: the run was already complete
        print(f"[xclass] run already complete at step {result.get('step', 0)}; nothing to train "
              f"(run directory: {os.path.abspath(cfg.train.out_dir)})")
        return 0
    print(f"[xclass] trained {result.get('step', 0)} steps, final loss "
          f"{result.get('loss', float('nan')):.4f}; run directory: {os.path.abspath(cfg.train.out_dir)}")
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    from xclass.cli.data import run_make_data

    return int(run_make_data(args) or 0)


def _cmd_export(args: argparse.Namespace) -> int:
    from xclass.cli.export import run_export_cli
    from xclass.perf import tune_malloc

    # Encoding a 512-row batch allocates activations of 30-300 MiB (ECAPA's pooling input is
    # [B, 3 C, T]); glibc maps and page-faults each of them afresh (xclass/perf.py).
    tune_malloc()
    return int(run_export_cli(args) or 0)


def _add_export_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True,
                   help="trained run directory (a train.ensemble directory: one model of all members, whose output "
                        "is their fused embedding)")
    p.add_argument("--out", required=True, help="ONNX file to write (OUT.json beside it describes the inputs)")
    p.add_argument("--data", default=None, help="dataset whose rows serve as the example and check batches "
                                                "(default: the run's own)")
    p.add_argument("--average-last", type=int, default=1, metavar="N",
                   help="export the mean weights of the run's last N checkpoints (default 1: the newest)")
    p.add_argument("--rows", type=int, default=8, help="rows of the example batch (default 8, at least 2)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest onnxruntime - torch difference accepted, relative to the largest embedding value")
    p.add_argument("--overwrite", action="store_true")


def _cmd_export_model(args: argparse.Namespace) -> int:
    from xclass.config_checks import below
    from xclass.config_types import ConfigError
    from xclass.eval.onnx_export import export_model

    # a batch of 1 would fix the batch axis at 1
    for name, low in (("average_last", 1), ("rows", 2)):
        why = below(getattr(args, name), low)
        if why:
            raise ConfigError(f"--{name.replace('_', '-')} {why}")
    if not args.tolerance > 0:     # NaN too
        raise ConfigError(f"--tolerance must be > 0, got {args.tolerance}")
    spec = export_model(args.run, args.out, data_path=args.data, average_last=args.average_last, rows=args.rows,
                        tol=args.tolerance, overwrite=args.overwrite)
    print(f"wrote {args.out} ({spec['encoder']}, inputs {', '.join(i['name'] for i in spec['inputs'])}; "
          f"onnxruntime within {spec['max_abs_diff']:.2g} of torch) and {args.out}.json")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from xclass.cli.evaluate import run_evaluate

    return int(run_evaluate(args) or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from xclass.demo import run_demo

    return int(run_demo(args.out, args.workers, args.task) or 0)


def _command(sub: argparse._SubParsersAction, name: str, add_args, func, help_: str, desc: str) -> None:
    p = sub.add_parser(name, help=help_, description=desc)
    add_args(p)
    p.set_defaults(func=func)


def _add_import_commands(sub: argparse._SubParsersAction) -> None:
    """``xclass import faces|audio|flows|pcap|wordnet|xc|text`` and ``xclass tfidf-baseline``."""
    from xclass.cli.importers import add_import_args, run_import
    from xclass.cli.xmc import add_text_args, add_tfidf_args, add_wordnet_args, add_xc_args, run as run_xmc

    from xclass.tasks import get_task, task_names

    names = [k for t in task_names() for k in get_task(t).importers]  # the kinds the task records name
    p = sub.add_parser("import", help=f"real data -> the xclass Parquet schema ({', '.join(names)})",
                       description="Stream user data into a dataset directory that `xclass train` reads.")
    add_import_args(p)
    kinds = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    kinds.metavar = "{" + ",".join(names) + "}"
    add_wordnet_args(kinds.add_parser("wordnet", help="WordNet 3.0 (Debian wordnet-base) -> XMC dataset"))
    add_xc_args(kinds.add_parser("xc", help="Extreme Classification Repository files -> XMC dataset"))
    add_text_args(kinds.add_parser("text", help="texts with label lists (JSONL/CSV/TSV/Parquet) -> XMC dataset"))
    xmc_cmd = {"wordnet": "import-wordnet", "xc": "import-xc", "text": "import-text"}

    def _run(a: argparse.Namespace) -> int:
        if a.import_kind in xmc_cmd:
            a.cmd = xmc_cmd[a.import_kind]
            return int(run_xmc(a) or 0)
        return int(run_import(a) or 0)

    p.set_defaults(func=_run)
    p = sub.add_parser("tfidf-baseline", help="TF-IDF nearest-neighbour baseline of an XMC dataset",
                       description="P@k / PSP@k of a TF-IDF kNN label-voting baseline (train -> test).")
    add_tfidf_args(p)
    p.set_defaults(func=lambda a: int(run_xmc(argparse.Namespace(**{**vars(a), "cmd": "tfidf"})) or 0))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xclass",
        description="Distributed extreme-classification training: generate or import data, train "
                    "encoders with model-parallel classifier heads (Ray + DeepSpeed), export FAISS "
                    "indexes, evaluate retrieval.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    from xclass.cli.data import add_make_data_args, add_validate_data_args, run_validate_data
    from xclass.cli.evaluate import add_evaluate_args
    from xclass.cli.export import add_export_cli_args

    _command(sub, "make-data", add_make_data_args, _cmd_make_data,
             "generate a synthetic dataset (face, speaker, quic, xmc)",
             "Write a seeded synthetic dataset in the xclass Parquet schema.")
    _command(sub, "validate-data", add_validate_data_args, lambda a: int(run_validate_data(a) or 0),
             "check Parquet files against a task schema",
             "Validate files row group by row group; the first problem is reported with file, row and "
             "column, exit code 1.")
    _add_import_commands(sub)
    _command(sub, "train", _add_train_args, _cmd_train,
             "train an encoder + classifier head from a YAML config",
             "Train on 1 process, or on N Ray workers (local or a cluster). With train.ensemble=K, K member "
             "runs one after the other in OUT_DIR/member-k (train.seed + 1000 k); export-index --run OUT_DIR "
             "fuses them.")
    _command(sub, "export-index", add_export_cli_args, _cmd_export,
             "embed items/labels from a run and write a FAISS index",
             "Encode a split with a trained run (or take an embedding Parquet) and write embeddings + "
             "a FAISS index with an id map.")
    _command(sub, "export-model", _add_export_model_args, _cmd_export_model,
             "write a run's encoder as an ONNX model (checked with onnxruntime)",
             "Export the encoder of a trained run to ONNX (dynamic batch and length axes) with a JSON "
             "description of its inputs; the file is run with onnxruntime and compared with the encoder.")
    from xclass.eval.split import add_split_args, run_split

    _command(sub, "split-gallery", add_split_args, run_split,
             "split labelled rows (embeddings or a dataset split) into gallery and queries",
             "Per class, seeded: gallery.parquet and queries.parquet for `evaluate --protocol ident`.")
    _command(sub, "evaluate", add_evaluate_args, _cmd_evaluate,
             "retrieval evaluation against an exported index",
             "P@k/nDCG@k/PSP@k (xmc), verification (face), EER/minDCF (speaker), kNN accuracy (quic); "
             "writes metrics.json, a Markdown report and plots.")

    p = sub.add_parser("demo", help="make-data -> train -> export-index -> evaluate on embedded data",
                       description="The main job end to end on a small generated dataset.")
    p.add_argument("--out", default="runs/demo", help="demo directory (data, run, index, report)")
    p.add_argument("--workers", type=int, default=2, help="training workers (Ray when > 1)")
    from xclass.tasks import task_names

    p.add_argument("--task", default="face", choices=task_names())
    p.set_defaults(func=_cmd_demo)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:  # `train --workers 2 a=b c=d`: key=value overrides may follow options too
        if args.cmd != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, non-zero exit
        from xclass.errors import is_user_error, one_line

        if not is_user_error(exc) or os.environ.get("XCLASS_DEBUG"):
            raise
        print(f"xclass {args.cmd}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
