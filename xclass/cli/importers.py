"""CLI glue of ``xclass import {faces,audio,flows,pcap} ...`` (the XMC kinds wordnet, xc and text are
wired by :mod:`xclass.cli.main` through :mod:`xclass.cli.xmc`); the importers are in :mod:`xclass.importers`.

Each streams files into the xclass Parquet schema of its task inside a temp directory renamed
when complete, with a progress bar, and writes ``meta.json`` like ``xclass make-data`` so that
``xclass train data.path=OUT`` works directly. Unreadable files stop the import with one line
naming the file (and row), exit code 2.

CLI glue: ``add_import_args(parser)`` adds the sub-subcommands; ``run_import(args) -> int``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from xclass.config_checks import below
from xclass.data.schema import DataError
from xclass.errors import one_line
from xclass.importers.common import ImportError_

__all__ = ["add_import_args", "run_import", "ImportError_"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset directory (must not exist unless --overwrite)")
    p.add_argument("--test-classes", type=int, default=0,
                   help="hold out this many classes (seeded choice) as the open-set test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _folder(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--root", required=True, help=f"folder with one sub-folder of {what} per class")
    p.add_argument("--workers", type=int, default=1,
                   help=f"processes decoding the {what} (default 1; the dataset is the same for any number)")
    p.add_argument("--label-regex", default=None,
                   help="take the class name from group 1 of this regex on the relative path instead of "
                        "the folder (e.g. '^\\d+_([a-z]+)_' for FSDD names)")
    p.add_argument("--test-regex", default=None,
                   help="files whose path matches go to the test split with their (training) class: "
                        "held-out recordings of known classes")
    p.add_argument("--test-only", action="store_true",
                   help="every file goes to the test split (a benchmark to encode with a model trained "
                        "elsewhere: export-index --data); no training classes")


def add_import_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = parser.add_subparsers(dest="import_kind", required=True, metavar="{faces,audio,flows,pcap}")
    p = sub.add_parser("faces", help="face images (PGM/PNG/JPEG), one folder per identity -> face schema")
    _folder(p, "images")
    p.add_argument("--size", type=int, default=112, help="square side of the stored image")
    p.add_argument("--grayscale", action="store_true", help="store one grey channel instead of RGB")
    p.add_argument("--crop-box", default=None, metavar="X0,Y0,X1,Y1",
                   help="crop every image to this box (widened to a square), then resize")
    p.add_argument("--boxes", default=None, metavar="CSV",
                   help="per-image crop boxes: header row, then file (relative to --root),x0,y0,x1,y1")
    p.add_argument("--landmarks", default=None, metavar="CSV",
                   help="per-image 5 points (eyes, nose, mouth corners): header row, then file,x1,y1,...,x5,y5; "
                        "similarity-aligned to the ArcFace 112x112 template scaled to --size")
    p.add_argument("--num-pairs", type=int, default=6000, help="verification pairs from the test split (at most)")
    p.add_argument("--impostor-ratio", type=float, default=1.0,
                   help="impostor pairs per genuine pair (default 1: a balanced file, shuffled)")
    p.add_argument("--pairs-file", default=None, metavar="TXT",
                   help="a published protocol instead of drawn pairs: LFW pairs.txt (its folds kept) or lines "
                        "'a b 1|0' (paths under --root); its files are the test split, their identities are "
                        "held out of training")
    _common(p)
    _add_audio(sub)
    _add_flows(sub)
    _add_pcap(sub)
    return parser


def _add_audio(sub) -> None:
    p = sub.add_parser("audio", help="WAV/FLAC/OGG, one folder per speaker -> 80-dim log-mel fbank")
    _folder(p, "recordings")
    p.add_argument("--sample-rate", type=int, default=16000, help="resample every file to this rate")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--max-frames", type=int, default=0, help="crop training utterances to this many frames")
    p.add_argument("--segments", action="store_true",
                   help="with --max-frames: cut training utterances into consecutive chunks instead")
    p.add_argument("--fbank-dtype", default="float32", choices=["float32", "float16"],
                   help="stored filterbank values: float16 halves the dataset (about three significant digits)")
    p.add_argument("--num-trials", type=int, default=6000, help="trials from the test split (at most)")
    p.add_argument("--impostor-ratio", type=float, default=1.0,
                   help="non-target trials per target trial (default 1: a balanced file, shuffled)")
    p.add_argument("--trials", default=None, metavar="TXT",
                   help="a published trial list instead of drawn trials: VoxCeleb '1|0 a b' or Kaldi / WeSpeaker "
                        "'a b target|nontarget' (paths under --root); its files are the test split, their "
                        "speakers are held out of training")
    _common(p)


def _add_flows(sub) -> None:
    p = sub.add_parser("flows", help="flow records (CSV/JSON lines/Parquet): one row per flow (CESNET-style PPI, list "
                                     "columns) or one row per packet (--flow-id-column)")
    p.add_argument("--input", nargs="+", required=True,
                   help="CSV (.csv, .csv.gz), JSON lines (.jsonl, .jsonl.gz, .ndjson) or Parquet files, or folders "
                        "read for such files at any depth")
    p.add_argument("--workers", type=int, default=1,
                   help="one row per flow: processes converting the rows (default 1; the dataset is the same for any "
                        "number)")
    p.add_argument("--label-column", default="label", help="class column (per flow, or on every packet row)")
    g = p.add_argument_group("one row per flow")
    g.add_argument("--ppi-column", default=None, help="column with [[iat_ms], [dir], [size]] (CESNET 'PPI')")
    g.add_argument("--sizes-column", default=None, help="list column of packet sizes")
    g.add_argument("--dirs-column", default=None, help="list column of directions (+1 / -1)")
    g.add_argument("--iat-column", default=None, help="list column of inter-arrival times (ms)")
    g.add_argument("--stats-map", default=None,
                   help="stat=COLUMN,... e.g. duration_s=DURATION,bytes_up=BYTES,bytes_down=BYTES_REV,"
                        "packets_up=PACKETS,packets_down=PACKETS_REV")
    g.add_argument("--port-column", default=None,
                   help="the flow's service (server) port, stored for flowcnn's port_embed / port_out (CESNET: DST_PORT)")
    g.add_argument("--proto-column", default=None, help="IP protocol, 6/tcp or 17/udp (CESNET: PROTOCOL)")
    g = p.add_argument_group("one row per packet (grouped into flows; statistics over all packets)")
    g.add_argument("--flow-id-column", default=None,
                   help="flow id column(s), comma-separated, e.g. a connection's "
                        "client_ip,client_port,server_ip,server_port,proto; giving it selects this layout")
    g.add_argument("--time-column", default=None, help="packet time (numbers in --time-unit, or a Parquet timestamp)")
    g.add_argument("--time-unit", default="s", choices=["s", "ms", "us", "ns"], help="unit of --time-column")
    g.add_argument("--size-column", default=None, help="packet size in bytes (integer, 0..32767)")
    g.add_argument("--direction-column", default=None,
                   help="+1/-1, 0/1 (0 = client->server) or up/down, out/in, upload/download, fwd/bwd, c2s/s2c")
    g.add_argument("--src-column", default=None,
                   help="instead of --direction-column: source address; +1 when it is the source of the "
                        "flow's first packet, else -1")
    g.add_argument("--bidirectional", default=None, metavar="A=B,...",
                   help="pairs of --flow-id-column columns a reply swaps (e.g. src_ip=dst_ip,src_port=dst_port): "
                        "both directions of a connection become one flow (use with --src-column)")
    p.add_argument("--num-packets", type=int, default=30, help="packets kept per flow (zero-padded)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="closed set: this share of each class's flows (seeded, spread over the file) goes to "
                        "the test split with its training label")
    _max_flows(p)
    _common(p)


def _add_pcap(sub) -> None:
    p = sub.add_parser("pcap", help="packet captures (pcap/pcapng) -> bidirectional flows -> quic schema")
    p.add_argument("--input", nargs="+", required=True,
                   help="capture files (pcap, pcapng, either gzip-compressed) or folders, read for "
                        ".pcap / .pcapng / .cap files (and .gz) at any depth")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", default=None, metavar="FILE",
                   help="CSV/JSONL flow labels: src_ip,src_port,dst_ip,dst_port,proto,label[,file]")
    g.add_argument("--ndpi", action="store_true", help="label flows with nDPI's ndpiReader (libndpi-bin)")
    g.add_argument("--label-sni", action="store_true", help="label = the TLS server name")
    p.add_argument("--ndpi-level", default="full", choices=["full", "app"],
                   help="full nDPI name (TLS.YouTube) or the application after the last dot (YouTube)")
    p.add_argument("--num-packets", type=int, default=30, help="packets kept per flow (zero-padded)")
    p.add_argument("--min-packets", type=int, default=1, help="drop flows with fewer packets")
    p.add_argument("--min-flows", type=int, default=1, help="drop labels with fewer flows")
    p.add_argument("--idle-timeout", type=float, default=120.0, help="seconds without a packet that end a flow")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out captures that cannot be read (listed in meta.json) instead of stopping")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="closed set: this share of each class's flows (seeded) goes to the test split")
    p.add_argument("--test-regex", default=None, metavar="RX",
                   help="split by capture: flows of captures whose path matches go to the test split; their "
                        "labels also met in other captures keep the training label (closed set), the others "
                        "are held out (open set)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes reading (and nDPI-labelling) the captures (default 1; the dataset is the same "
                        "for any number)")
    _max_flows(p)
    _common(p)


def _max_flows(p) -> None:
    p.add_argument("--max-flows", type=int, default=0, metavar="N",
                   help="keep at most N flows per label (a seeded sample spread over the input, before the "
                        "split; with --test-regex per label and side); 0: all")


def run_import(args: argparse.Namespace) -> int:
    """Run the import; prints a one-line JSON summary. 0 on success, 2 on bad input."""
    try:
        meta = _dispatch(args)
    except (ImportError_, DataError, FileExistsError) as exc:
        if os.environ.get("XCLASS_DEBUG"):
            raise
        print(f"xclass import: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({"out": os.path.abspath(args.out), "task": meta["task"], "num_classes": meta["num_classes"],
                      "test_classes": meta["test_classes"],
                      "rows": {k: v["rows"] for k, v in meta["splits"].items()}}))
    return 0


#: numeric options checked before anything is read: (attribute, lowest value, is the bound excluded)
_BOUNDS = (("test_classes", 0, False), ("num_packets", 1, False), ("min_packets", 1, False),
           ("min_flows", 1, False), ("idle_timeout", 0, True), ("num_pairs", 0, False), ("num_trials", 0, False),
           ("impostor_ratio", 0, True), ("sample_rate", 1, False), ("n_mels", 1, False), ("max_frames", 0, False),
           ("max_flows", 0, False), ("workers", 1, False))


def _check_bounds(a: argparse.Namespace) -> None:
    """ImportError_ naming the first option out of range (``--num-packets 0``, ``--test-classes -1``)."""
    for attr, low, strict in _BOUNDS:
        v = getattr(a, attr, None)
        why = below(v, low, strict) if v is not None else None
        if why:
            raise ImportError_(f"--{attr.replace('_', '-')} {why}")


def _dispatch(a: argparse.Namespace) -> dict:
    _check_bounds(a)
    show = not a.no_progress
    if a.import_kind == "faces":
        from xclass.importers.faces import import_faces

        return import_faces(a.root, a.out, size=a.size, test_classes=a.test_classes, test_regex=a.test_regex,
                            label_regex=a.label_regex, num_pairs=a.num_pairs, seed=a.seed, overwrite=a.overwrite,
                            show_progress=show, impostor_ratio=a.impostor_ratio, grayscale=a.grayscale,
                            crop_box=a.crop_box, boxes_csv=a.boxes, landmarks_csv=a.landmarks,
                            pairs_file=a.pairs_file, workers=a.workers, test_only=a.test_only)
    if a.import_kind == "audio":
        from xclass.importers.audio import import_audio

        return import_audio(a.root, a.out, sample_rate=a.sample_rate, n_mels=a.n_mels, max_frames=a.max_frames,
                            segments=a.segments, test_classes=a.test_classes, test_regex=a.test_regex,
                            label_regex=a.label_regex, num_trials=a.num_trials, seed=a.seed,
                            overwrite=a.overwrite, show_progress=show, impostor_ratio=a.impostor_ratio,
                            trials_file=a.trials, workers=a.workers, fbank_dtype=a.fbank_dtype,
                            test_only=a.test_only)
    if a.import_kind == "pcap":
        from xclass.importers.pcap import import_pcap

        return import_pcap(a.input, a.out, labels=a.labels, ndpi=a.ndpi, ndpi_level=a.ndpi_level, sni=a.label_sni,
                           num_packets=a.num_packets, min_packets=a.min_packets, min_flows=a.min_flows,
                           idle_timeout=a.idle_timeout, test_classes=a.test_classes,
                           test_fraction=a.test_fraction, seed=a.seed, overwrite=a.overwrite, show_progress=show,
                           skip_bad=a.skip_bad, test_regex=a.test_regex, max_flows=a.max_flows, workers=a.workers)
    from xclass.importers.flows import import_flows

    return import_flows(a.input, a.out, label_column=a.label_column, ppi_column=a.ppi_column,
                        sizes_column=a.sizes_column, dirs_column=a.dirs_column, iat_column=a.iat_column,
                        stats_map=a.stats_map, flow_id_column=a.flow_id_column, time_column=a.time_column,
                        time_unit=a.time_unit, size_column=a.size_column, direction_column=a.direction_column,
                        src_column=a.src_column, bidirectional=a.bidirectional, num_packets=a.num_packets, test_classes=a.test_classes,
                        test_fraction=a.test_fraction, seed=a.seed, overwrite=a.overwrite, show_progress=show,
                        port_column=a.port_column, proto_column=a.proto_column, max_flows=a.max_flows,
                        workers=a.workers)


def main(argv=None) -> int:
    """``xclass import {faces,audio,flows,pcap} ...`` without the XMC kinds (tests call it directly)."""
    return run_import(add_import_args(argparse.ArgumentParser(prog="xclass import")).parse_args(argv))
