"""``xclass import pcap``: packet captures -> the quic flow schema (as ``import flows`` writes).

Flows come from :mod:`xclass.importers.pcap_read`. Each flow needs a label, from one of:

- ``labels``: a CSV (header row) or JSONL flow-label file with ``src_ip``, ``src_port``,
  ``dst_ip``, ``dst_port``, ``proto`` (6/17 or tcp/udp) and ``label``; a row matches a flow in
  either direction (the first row of a 5-tuple wins; optional ``file`` column = capture base name);
- ``ndpi``: run nDPI's ``ndpiReader -C`` on every capture (Debian ``libndpi-bin``) and take its
  ``ndpi_proto`` (e.g. ``TLS.YouTube``; ``ndpi_level="app"`` keeps the part after the last dot);
  flows nDPI calls ``Unknown`` are unlabelled;
- ``sni``: the flow's TLS server name.

Unlabelled flows and flows of fewer than ``min_packets`` packets are dropped (counted in
meta.json ``source``). Labels with fewer than ``min_flows`` flows are dropped too.

Splits as ``import flows`` (``test_classes``: open set; ``test_fraction``: closed set by rows),
or by capture file (``test_regex``, see :func:`import_pcap`).
"""
from __future__ import annotations

import csv
import gzip
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from contextlib import closing
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from xclass.importers.common import ImportError_, compile_option, ip_proto
from xclass.importers.inputs import decode_in_order, expand_inputs, first_positions, text_lines
from xclass.importers.flow_writer import finish_stats, pack
from xclass.importers.pcap_read import Flow, assemble_flows, open_capture, read_packets

Key = Tuple[int, Tuple[bytes, int], Tuple[bytes, int]]


def flow_key(proto: int, a: Tuple[bytes, int], b: Tuple[bytes, int]) -> Key:
    return (proto,) + ((a, b) if a <= b else (b, a))  # type: ignore[return-value]


def _endpoint(ip: str, port, where: str) -> Tuple[bytes, int]:
    try:
        return ipaddress.ip_address(str(ip).strip()).packed, int(port)
    except ValueError:
        raise ImportError_(f"{where}: bad address or port {ip!r}:{port!r}") from None


def read_label_file(path: str) -> Dict[Tuple[str, Key], str]:
    """{(capture base name or "", flow key): label} from a CSV or JSONL flow-label file."""
    if not os.path.isfile(path):
        raise ImportError_(f"{path}: label file not found", file=path)
    if path.endswith((".jsonl", ".json")):
        rows = []
        for i, line in enumerate(text_lines(path), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ImportError_(f"{path}: line {i}: not JSON ({exc})", file=path, row=i) from None
    else:
        rows = [(i, r) for i, r in enumerate(csv.DictReader(text_lines(path)), start=2)]
    out: Dict[Tuple[str, Key], str] = {}
    for i, r in rows:
        where = f"{path}: line {i}"
        miss = [c for c in ("src_ip", "src_port", "dst_ip", "dst_port", "proto", "label") if r.get(c) in (None, "")]
        if miss:
            raise ImportError_(f"{where}: missing {miss}", file=path, row=i)
        key = flow_key(ip_proto(r["proto"], where), _endpoint(r["src_ip"], r["src_port"], where),
                       _endpoint(r["dst_ip"], r["dst_port"], where))
        out.setdefault((os.path.basename(str(r.get("file") or "")), key), str(r["label"]))
    return out


def ndpi_labels(path: str, level: str = "full") -> Dict[Key, str]:
    """{flow key: nDPI protocol} of one capture from ``ndpiReader -q -i PATH -C CSV`` (a gzip
    capture is decompressed to a temporary file first: libpcap reads no gzip)."""
    exe = shutil.which("ndpiReader")
    if exe is None:
        raise ImportError_("--ndpi needs nDPI's ndpiReader on PATH (Debian: apt-get install libndpi-bin)")
    with tempfile.TemporaryDirectory() as d:
        out, src = os.path.join(d, "flows.csv"), path
        with open_capture(path) as f:
            if isinstance(f, gzip.GzipFile):
                src = os.path.join(d, "capture")
                with open(src, "wb") as plain:
                    shutil.copyfileobj(f, plain)
        res = subprocess.run([exe, "-q", "-i", src, "-C", out], capture_output=True, text=True, timeout=3600)
        if res.returncode != 0 or not os.path.exists(out):
            msg = (res.stderr or res.stdout).strip().splitlines()
            raise ImportError_(f"{path}: ndpiReader failed ({msg[-1] if msg else res.returncode})", file=path)
        with open(out, newline="", encoding="utf-8", errors="replace") as f:  # SNI bytes may be anything
            rows = list(csv.DictReader(f))
    labels: Dict[Key, str] = {}
    for r in rows:
        proto = r.get("protocol") or r.get("#protocol") or ""
        name = r.get("ndpi_proto", "")
        if proto not in ("6", "17") or not name or name.startswith("Unknown"):
            continue
        try:
            key = flow_key(int(proto), _endpoint(r["src_ip"], r["src_port"], path),
                           _endpoint(r["dst_ip"], r["dst_port"], path))
        except ImportError_:
            continue
        labels.setdefault(key, name.rsplit(".", 1)[-1] if level == "app" else name)
    return labels


MAX_STORED_SIZE = 32767  # pkt_sizes is int16


def service_port(fl: Flow) -> int:
    """The flow's service port: the server's (the side that did not send the first packet), or
    the client's when only the client's is a well-known port (< 1024), as when a capture starts
    with a reply."""
    c, s = fl.client[1], fl.server[1]
    return c if 0 < c < 1024 <= s else s


def flow_packets(fl: Flow, num_packets: int, source: int = -1) -> Dict[str, np.ndarray]:
    """The writer's dict for a flow: first packets, the 8 statistics over all its packets, the
    server's port and protocol, and ``source``: its capture's position in the import's list.
    A stored size above 32,767 bytes (an IP length up to 65,535, seen in captures taken before
    segmentation offload splits a packet) is stored as 32,767; the statistics keep true bytes."""
    stats = finish_stats(fl.n, fl.n_up, fl.bytes_up, fl.bytes_down, fl.size_sq, fl.span_ms)
    sizes = np.minimum(np.array(fl.sizes, np.int64), MAX_STORED_SIZE)
    return pack(sizes, np.array(fl.dirs), np.array(fl.iat_ms), stats, num_packets, port=service_port(fl),
                proto=fl.proto, source=source)


def read_capture(path: str, *, num_packets: int, idle_timeout: float, ndpi: bool, ndpi_level: str,
                 skip_bad: bool) -> Tuple[List[Flow], Dict[str, int], Dict[Key, str], str]:
    """One capture's flows (first-packet order), packet counts and nDPI labels (when ``ndpi``);
    with ``skip_bad`` a capture that cannot be read gives no flows and its error as the last item
    (otherwise the ImportError_ is raised). Runs in an import worker process with ``--workers``."""
    if not os.path.isfile(path):
        raise ImportError_(f"{path}: {'not a file' if os.path.exists(path) else 'capture not found'}", file=path)
    stats: Dict[str, int] = {}
    try:
        flows = assemble_flows(read_packets(path, stats), num_packets, idle_timeout)
        return flows, stats, (ndpi_labels(path, ndpi_level) if ndpi else {}), ""
    except ImportError_ as exc:
        if not skip_bad:
            raise
        return [], {}, {}, str(exc)


def labelled_flows(captures: Sequence[str], *, labels: Optional[str] = None, ndpi: bool = False,
                   ndpi_level: str = "full", sni: bool = False, num_packets: int = 30, min_packets: int = 1,
                   min_flows: int = 1, idle_timeout: float = 120.0,
                   skip_bad: bool = False, workers: int = 1) -> Tuple[List[Tuple[str, Flow]], Dict]:
    """[(label, flow)] over all captures (capture order, then first-packet order) and counts.
    ``skip_bad``: a capture that cannot be read is left out (named in counts["skipped_files"])
    instead of stopping the import. ``workers``: captures read (and labelled by nDPI) in that
    many processes; the flows come out in the same order."""
    if sum([labels is not None, ndpi, sni]) != 1:
        raise ImportError_("give exactly one label source: --labels FILE, --ndpi or --label-sni")
    table = read_label_file(labels) if labels else {}
    counts: Counter = Counter()
    out: List[Tuple[str, Flow]] = []
    bad: List[str] = []
    read = partial(read_capture, num_packets=num_packets, idle_timeout=idle_timeout, ndpi=ndpi,
                   ndpi_level=ndpi_level, skip_bad=skip_bad)
    with closing(decode_in_order(read, captures, workers, chunksize=1)) as results:   # the pool ends here
        for path, (flows, stats, nd, error) in zip(captures, results):
            if error:
                bad.append(error)
                continue
            counts.update(packets=stats.get("packets", 0), skipped_packets=stats.get("skipped", 0), flows=len(flows))
            base = os.path.basename(path)
            for fl in flows:
                fl.capture = path
                key = flow_key(fl.proto, fl.client, fl.server)
                name = (fl.sni if sni else nd.get(key) if ndpi
                        else table.get((base, key), table.get(("", key))))
                if name is None:
                    counts["unlabelled_flows"] += 1
                elif fl.n < min_packets:
                    counts["short_flows"] += 1
                else:
                    out.append((name, fl))
    per = Counter(n for n, _ in out)
    rare = {n for n, c in per.items() if c < min_flows}
    counts["rare_label_flows"] = sum(per[n] for n in rare)
    return [(n, f) for n, f in out if n not in rare], {**counts, "skipped_files": bad}


#: file names read from a folder given as --input (compressed or not)
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")


def import_pcap(captures: Sequence[str], out: str, *, labels: Optional[str] = None, ndpi: bool = False,
                ndpi_level: str = "full", sni: bool = False, num_packets: int = 30, min_packets: int = 1,
                min_flows: int = 1, idle_timeout: float = 120.0, test_classes: int = 0, test_fraction: float = 0.0,
                seed: int = 0, overwrite: bool = False, show_progress: bool = True, skip_bad: bool = False,
                test_regex: Optional[str] = None, max_flows: int = 0, workers: int = 1) -> Dict:
    """Import captures into ``out`` exactly as ``import flows`` writes a dataset; returns meta.

    ``test_regex``: the flows of captures whose path matches go to the test split (a split by
    capture): labels also met in the other captures keep their training label (closed-set
    queries), labels met only in matching captures are held out (open set, labels >= C).
    ``max_flows`` > 0: at most that many flows per label (per label and side with ``test_regex``),
    a seeded sample spread over the captures, taken after ``min_flows``. ``workers``: captures
    read in that many processes (:func:`labelled_flows`); the dataset is the same."""
    from xclass.importers.flow_writer import write_flows

    captures = expand_inputs(captures, CAPTURE_SUFFIXES, "capture")
    if not 0.0 <= test_fraction < 1.0:
        raise ImportError_(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if test_regex is not None and (test_classes or test_fraction):
        raise ImportError_("--test-regex splits by capture: it cannot be combined with --test-classes or --test-fraction")
    rx = compile_option("--test-regex", test_regex)
    if os.path.exists(out) and not overwrite:
        raise ImportError_(f"{out} exists; pass --overwrite to replace it", file=out)
    flows, counts = labelled_flows(captures, labels=labels, ndpi=ndpi, ndpi_level=ndpi_level, sni=sni,
                                   num_packets=num_packets, min_packets=min_packets, min_flows=min_flows,
                                   idle_timeout=idle_timeout, skip_bad=skip_bad, workers=workers)
    if not flows:
        raise ImportError_(f"no labelled flow in {len(captures)} capture(s) ({counts})")
    per = Counter(n for n, _ in flows)
    names = sorted(per)
    index = first_positions(captures)  # a flow's capture -> meta source.files
    source = {"importer": "pcap", "files": [os.path.abspath(p) for p in captures],
              "labels": "ndpi:" + ndpi_level if ndpi else "sni" if sni else os.path.abspath(str(labels)),
              "idle_timeout_s": idle_timeout, "min_packets": min_packets, "min_flows": min_flows, **counts}
    if rx is None:
        read = lambda: (per, ((n, flow_packets(f, num_packets, index[f.capture])) for n, f in flows))  # noqa: E731
        return write_flows(out, read, source, num_packets, test_classes, seed, overwrite, test_fraction,
                           max_flows=max_flows)
    to_test = [bool(rx.search(f.capture)) for _, f in flows]
    if all(to_test) or not any(to_test):
        raise ImportError_(f"--test-regex {test_regex!r} matches {'every' if all(to_test) else 'no'} capture "
                           "with labelled flows: the split by capture needs captures on both sides")
    held = sorted(set(names) - {n for (n, _), t in zip(flows, to_test) if not t})
    source["test_regex"] = test_regex
    sides = Counter((n, t) for (n, _), t in zip(flows, to_test))
    read = lambda: (sides, ((n, flow_packets(f, num_packets, index[f.capture]), t)  # noqa: E731
                            for (n, f), t in zip(flows, to_test)))
    return write_flows(out, read, source, num_packets, 0, seed, overwrite, held_out=held, max_flows=max_flows)
