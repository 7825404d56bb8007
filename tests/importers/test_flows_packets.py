"""Flow importer, one row per packet (``--flow-id-column``): shuffled packets grouped into flows
must import exactly like the equivalent one-row-per-flow list-column file (every output field),
for CSV, JSON lines and Parquet, a 5-tuple id, +1/-1, 0/1 and word directions, directions derived from
``--src-column``, flows longer than ``num_packets``, tiny record batches and several files; a
hand-computed case; every error names the file, row and column (or flow); the CLI path."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.importers import ImportError_
from xclass.importers import flows as flows_mod
from xclass.importers.flows import import_flows

BASE = 1_650_000_000.0  # epoch seconds; times are BASE + k / 1024 (exact in float64)
ID5 = ("client_ip", "client_port", "server_ip", "server_port", "proto")
ENCODE = {"pm1": {1: 1, -1: -1}, "01": {1: 0, -1: 1}, "words": {1: "UP", -1: "down"}, "inout": {1: "out", -1: "in"}}


def _make_flows(seed, n_flows=14, max_packets=20):
    """Random flows: 5-tuple key, label, distinct packet times (sorted), sizes, true directions."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, max_packets + 1, n_flows)
    lens[0] = max_packets  # at least one flow longer than num_packets
    ticks = iter(rng.permutation(100_000)[: lens.sum()])
    out = []
    for i, m in enumerate(lens):
        dirs = rng.choice([1, -1], m)
        dirs[0] = 1  # the client sends first: --src-column derives the true directions
        out.append({"key": (f"10.0.{i % 3}.{i}", 40000 + i, "192.0.2.7", 443, 17), "label": f"c{i % 4}",
                    "t": BASE + np.sort([next(ticks) for _ in range(m)]) / 1024, "size": rng.integers(0, 1500, m),
                    "dir": dirs})
    return out


def _packet_rows(flows, seed, encoding):
    """Shuffled per-packet rows (dicts) of ``flows``; ``encoding``: a key of ENCODE, or 'src'."""
    rows = []
    for f in flows:
        for t, s, d in zip(f["t"], f["size"], f["dir"]):
            r = dict(zip(ID5, f["key"]), ts=float(t), length=int(s), app=f["label"])
            if encoding == "src":
                r["src"] = f["key"][0] if d > 0 else f["key"][2]
            else:
                r["direction"] = ENCODE[encoding][int(d)]
            rows.append(r)
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def _write_rows(path, rows):
    """CSV by hand (floats with repr: exact round trip), JSON lines (plain or gzip) or Parquet
    with pyarrow's type inference."""
    if str(path).endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    if ".jsonl" in str(path):
        with (gzip.open if str(path).endswith(".gz") else open)(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return
    with open(path, "w") as f:
        f.write(",".join(rows[0]) + "\n")
        f.writelines(",".join(repr(v) if isinstance(v, float) else str(v) for v in r.values()) + "\n" for r in rows)


def _equivalent_flow_file(flows, rows, path):
    """The one-row-per-flow list-column file: flows in order of their first packet row, packets by
    time, IATs in ms with the first 0."""
    by_key = {f["key"]: f for f in flows}
    order = list(dict.fromkeys(tuple(r[c] for c in ID5) for r in rows))
    table = {"app": [], "sizes": [], "dirs": [], "iat": []}
    for key in order:
        f = by_key[key]
        table["app"].append(f["label"])
        table["sizes"].append(f["size"].tolist())
        table["dirs"].append(f["dir"].tolist())
        table["iat"].append([0.0] + (np.diff(f["t"]) * 1000).tolist())
    pq.write_table(pa.table(table), path)


def _tables(out):
    return {name: pq.read_table(os.path.join(out, name)) for name in sorted(os.listdir(out))
            if name.endswith(".parquet")}


@pytest.fixture
def tiny_batches(monkeypatch):
    """Re-chunk every record batch into 7-row batches: flows straddle many batches."""
    real = flows_mod.FlowSource._batches

    def small(self, path):
        for b in real(self, path):
            yield from (b.slice(i, 7) for i in range(0, b.num_rows, 7))
    monkeypatch.setattr(flows_mod.FlowSource, "_batches", small)


@pytest.mark.parametrize("ext,encoding,test_classes", [("csv", "pm1", 0), ("parquet", "01", 1), ("csv", "01", 0),
                                                       ("csv", "words", 1), ("parquet", "inout", 0),
                                                       ("csv", "src", 2), ("parquet", "src", 0),
                                                       ("jsonl", "pm1", 1), ("jsonl.gz", "words", 0),
                                                       ("jsonl", "src", 0)])
def test_packets_match_the_per_flow_import(tmp_path, tiny_batches, ext, encoding, test_classes):
    flows = _make_flows(seed=len(encoding) + test_classes)
    rows = _packet_rows(flows, seed=1, encoding=encoding)
    half = len(rows) // 2  # two files; flows straddle them
    files = [str(tmp_path / f"p{i}.{ext}") for i in range(2)]
    _write_rows(files[0], rows[:half])
    _write_rows(files[1], rows[half:])
    _equivalent_flow_file(flows, rows, tmp_path / "flows.parquet")
    kw = dict(label_column="app", num_packets=8, test_classes=test_classes, seed=3, show_progress=False)
    direction = {"src_column": "src"} if encoding == "src" else {"direction_column": "direction"}
    meta = import_flows(files, str(tmp_path / "pk"), flow_id_column=",".join(ID5), time_column="ts",
                        size_column="length", **direction, **kw)
    ref = import_flows([str(tmp_path / "flows.parquet")], str(tmp_path / "ref"), sizes_column="sizes",
                       dirs_column="dirs", iat_column="iat", **kw)
    got, want = _tables(tmp_path / "pk"), _tables(tmp_path / "ref")
    assert sorted(got) == sorted(want) and ("gallery_query.parquet" in got) == (test_classes > 0)
    for name in want:
        assert got[name].schema == want[name].schema
        g, w = got[name].to_pydict(), want[name].to_pydict()
        if "source_file" in w:  # the input file: unknown for packets (a flow may span files), 0 for the one flow file
            assert set(g.pop("source_file")) == {-1} and set(w.pop("source_file")) == {0}
        assert g == w, name
    assert {k: v for k, v in meta.items() if k != "source"} == {k: v for k, v in ref.items() if k != "source"}
    assert meta["source"]["format"] == "packets" and meta["source"]["flow_id_columns"] == list(ID5)
    assert max(len(f["t"]) for f in flows) > 8 and sum(meta["splits"][s]["rows"] for s in meta["splits"]) == 14


def test_hand_computed_flow(tmp_path):
    # flow "A" (ms): out of order; t=20 is a tie broken by file order (1400 before 40); 4 packets, 3 kept
    # flow "B": its first packet comes from the server, so --src-column makes the server's packets +1
    (tmp_path / "p.csv").write_text("id,t_ms,size,src,cls\n"
                                    "A,20,1400,srv,web\nB,7,60,s,dns\nA,5,100,cli,web\nA,20,40,cli,web\n"
                                    "A,35,500,srv,web\nB,9,80,c,dns\n")
    import_flows([str(tmp_path / "p.csv")], str(tmp_path / "out"), flow_id_column="id", time_column="t_ms",
                 time_unit="ms", size_column="size", src_column="src", label_column="cls", num_packets=3,
                 show_progress=False)
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert t["label"] == [1, 0] and t["num_packets"] == [3, 2]  # classes sorted: dns 0, web 1; A first in file
    assert t["pkt_sizes"][0] == [100, 1400, 40] and t["pkt_dirs"][0] == [1, -1, 1]
    assert t["pkt_iat"][0] == [0.0, 15.0, 0.0]
    # all 4 packets: duration 30 ms; up (cli) 100 + 40, down (srv) 1400 + 500; mean 510; mean IAT 30 / 3
    std = np.sqrt(np.mean((np.array([100, 1400, 40, 500]) - 510.0) ** 2))
    np.testing.assert_allclose(t["flow_stats"][0], [0.030, 140, 1900, 2, 2, 510, std, 10.0], rtol=1e-6)
    assert t["pkt_sizes"][1] == [60, 80, 0] and t["pkt_dirs"][1] == [1, -1, 0] and t["pkt_iat"][1] == [0.0, 2.0, 0.0]
    np.testing.assert_allclose(t["flow_stats"][1], [0.002, 60, 80, 1, 1, 70, 10, 2.0], rtol=1e-6)


def test_parquet_timestamp_column_and_single_packet_flow(tmp_path):
    ts = pa.array([1_000_000, 1_250_000, 5_000_000], pa.timestamp("us"))
    pq.write_table(pa.table({"flow": [7, 7, 8], "time": ts, "bytes": [10, 30, 99], "d": [0, 1, 0],
                             "label": [2, 2, 5]}), tmp_path / "p.parquet")
    meta = import_flows([str(tmp_path / "p.parquet")], str(tmp_path / "out"), flow_id_column="flow",
                        time_column="time", size_column="bytes", direction_column="d", show_progress=False)
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert meta["class_names"] == ["2", "5"] and t["pkt_iat"][0][:2] == [0.0, 250.0]
    np.testing.assert_allclose(t["flow_stats"][0], [0.25, 10, 30, 1, 1, 20, 10, 250.0], rtol=1e-6)
    np.testing.assert_allclose(t["flow_stats"][1], [0, 99, 0, 1, 0, 99, 0, 0], rtol=1e-6)


def _import_csv(tmp_path, text, **kw):
    (tmp_path / "p.csv").write_text(text)
    args = dict(flow_id_column="id", time_column="t", size_column="size", direction_column="dir",
                label_column="cls", show_progress=False)
    import_flows([str(tmp_path / "p.csv")], str(tmp_path / "out"), **{**args, **kw})


HEADER = "id,t,size,dir,cls\n"


@pytest.mark.parametrize("body,kw,match", [
    ("a,1,10,1,x\n", {"size_column": "bytes"}, r"p\.csv: missing column\(s\) \['bytes'\]"),
    ("a,1,10,1,x\na,2,ten,1,x\n", {}, r"p\.csv: row 1, column size: not a number: 'ten'"),
    ("a,1,10,1,x\na,x2,10,1,x\n", {}, r"p\.csv: row 1, column t: not a number: 'x2'"),
    ("a,1,10,1,x\na,nan,10,1,x\n", {}, r"p\.csv: row 1, column t: nan is not a finite number"),
    ("a,1,10,1,x\na,2,10.5,1,x\n", {}, r"p\.csv: row 1, column size: packet size 10.5 is not an integer"),
    ("a,1,10,1,x\na,2,40000,1,x\n", {}, r"p\.csv: row 1, column size: packet size 40000 is not an integer"),
    ("a,1,10,1,x\na,2,10,sideways,x\n", {}, r"p\.csv: row 1, column dir: unknown direction value 'sideways'"),
    ("a,1,10,0,x\na,2,10,1,x\nb,3,10,-1,x\n", {}, r"p\.csv: row 2, column dir: direction '-1' mixes"),
    ("a,1,10,1,x\nb,2,10,1,y\na,3,10,1,z\n", {},
     r"p\.csv: row 2, column cls: flow id=a has packets labelled 'x' and 'z'"),
    ("a,1,10,1,x\nb,2,10,1,\n", {}, r"p\.csv: row 1, column cls: empty label"),
    ("a,1,10,1,x\n,2,10,1,x\n", {}, r"p\.csv: row 1, column id: empty flow id"),
    ("", {}, r"p\.csv: no packet rows \(empty file\)"),
])
def test_errors_name_file_row_and_column(tmp_path, body, kw, match):
    with pytest.raises(ImportError_, match=match):
        _import_csv(tmp_path, HEADER + body, **kw)
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["p.csv"]


def test_errors_across_batches_files_and_options(tmp_path, tiny_batches):
    kw = dict(flow_id_column="id", time_column="t", size_column="size", label_column="cls", show_progress=False)
    out = str(tmp_path / "out")
    # a label conflict between two files, found in a later batch: names the second file and its row
    (tmp_path / "a.csv").write_text(HEADER + "".join(f"f{i},{i},10,up,x\n" for i in range(20)))
    (tmp_path / "b.csv").write_text(HEADER + "".join(f"g{i},{i},10,in,x\n" for i in range(10)) + "f3,99,10,out,y\n")
    with pytest.raises(ImportError_, match=r"b\.csv: row 10, column cls: flow id=f3 has packets labelled 'x' and 'y'"):
        import_flows([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], out, direction_column="dir", **kw)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ImportError_, match=r"e\.csv: cannot read flows \(Empty CSV file\)"):
        import_flows([str(tmp_path / "a.csv"), str(tmp_path / "e.csv")], out, direction_column="dir", **kw)
    schema = pa.schema([("id", pa.string()), ("t", pa.float64()), ("size", pa.int64()), ("dir", pa.int64()),
                        ("cls", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "z.parquet")
    with pytest.raises(ImportError_, match=r"z\.parquet: no packet rows"):
        import_flows([str(tmp_path / "z.parquet")], out, direction_column="dir", **kw)
    pq.write_table(pa.table({"id": ["a"], "t": [None], "size": [1], "dir": [1], "cls": ["x"]}, schema=schema),
                   tmp_path / "n.parquet")
    with pytest.raises(ImportError_, match=r"n\.parquet: row 0, column t: empty value"):
        import_flows([str(tmp_path / "n.parquet")], out, direction_column="dir", **kw)
    with pytest.raises(ImportError_, match=r"n\.parquet: missing column\(s\) \['src'\]"):
        import_flows([str(tmp_path / "n.parquet")], out, src_column="src", **kw)
    with pytest.raises(ImportError_, match="one of --direction-column or --src-column"):
        import_flows([str(tmp_path / "n.parquet")], out, **kw)
    with pytest.raises(ImportError_, match="does not combine with --ppi-column"):
        import_flows([str(tmp_path / "n.parquet")], out, ppi_column="PPI", direction_column="dir", **kw)
    with pytest.raises(ImportError_, match="need --flow-id-column"):
        import_flows([str(tmp_path / "n.parquet")], out, ppi_column="PPI", time_column="t")
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path, capsys):
    from xclass.cli import main

    _write_rows(tmp_path / "p.csv", _packet_rows(_make_flows(seed=5), seed=0, encoding="01"))
    args = ["import", "flows", "--input", str(tmp_path / "p.csv"), "--flow-id-column", ",".join(ID5),
            "--time-column", "ts", "--size-column", "length", "--direction-column", "direction",
            "--label-column", "app", "--num-packets", "6", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "quic" and summary["num_classes"] == 4 and summary["rows"] == {"train": 14}
    assert pq.read_table(tmp_path / "out" / "train.parquet").schema.field("pkt_sizes").type.list_size == 6
    rc = main(args[:-1] + ["--time-unit", "ms", "--size-column", "app", "--out", str(tmp_path / "bad"),
                           "--no-progress"])
    assert rc == 2 and "p.csv: row 0, column app: not a number: 'c" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


RAW5 = ("src_ip", "src_port", "dst_ip", "dst_port", "proto")


def _raw_capture_rows(rows):
    """A capture's per-packet 5-tuple: a server -> client packet has the endpoints swapped."""
    out = []
    for r in rows:
        up = r["src"] == r["client_ip"]
        a, b = (("client_ip", "client_port"), ("server_ip", "server_port"))[::1 if up else -1]
        out.append(dict(src_ip=r[a[0]], src_port=r[a[1]], dst_ip=r[b[0]], dst_port=r[b[1]], proto=r["proto"],
                        ts=r["ts"], length=r["length"], app=r["app"]))
    return out


def test_bidirectional_5tuple_matches_connection_ids(tmp_path):
    """``--bidirectional src_ip=dst_ip,src_port=dst_port`` folds both directions of each connection
    into one flow: the import equals the connection-level id import, field by field."""
    flows = _make_flows(seed=11)
    rows = _packet_rows(flows, seed=2, encoding="src")
    _write_rows(str(tmp_path / "conn.csv"), rows)
    raw = _raw_capture_rows(rows)
    _write_rows(str(tmp_path / "raw.csv"), raw)
    kw = dict(label_column="app", num_packets=8, seed=3, show_progress=False, time_column="ts",
              size_column="length", src_column="src")
    ref = import_flows([str(tmp_path / "conn.csv")], str(tmp_path / "ref"), flow_id_column=",".join(ID5), **kw)
    kw["src_column"] = "src_ip"
    split = import_flows([str(tmp_path / "raw.csv")], str(tmp_path / "split"), flow_id_column=",".join(RAW5), **kw)
    got = import_flows([str(tmp_path / "raw.csv")], str(tmp_path / "bi"), flow_id_column=",".join(RAW5),
                       bidirectional="src_ip=dst_ip, src_port=dst_port", **kw)
    want, have = _tables(tmp_path / "ref"), _tables(tmp_path / "bi")
    for name in want:
        assert have[name].to_pydict() == want[name].to_pydict(), name
    assert got["source"]["bidirectional"] == "src_ip=dst_ip, src_port=dst_port"
    rows_of = lambda m: sum(s["rows"] for s in m["splits"].values())  # noqa: E731
    assert rows_of(got) == rows_of(ref) == 14 and rows_of(split) > 14  # without it, replies form flows of their own


@pytest.mark.parametrize("spec,match", [("src_ip=nope", "two different columns"), ("src_ip", "COLUMN=COLUMN"),
                                        ("src_ip=src_ip", "two different columns")])
def test_bidirectional_bad_pairs(tmp_path, spec, match):
    rows = _raw_capture_rows(_packet_rows(_make_flows(seed=1, n_flows=2), seed=0, encoding="src"))
    _write_rows(str(tmp_path / "raw.csv"), rows)
    with pytest.raises(ImportError_, match=match):
        import_flows([str(tmp_path / "raw.csv")], str(tmp_path / "out"), flow_id_column=",".join(RAW5),
                     time_column="ts", size_column="length", src_column="src_ip", label_column="app",
                     bidirectional=spec, show_progress=False)
    assert not os.path.exists(tmp_path / "out")
