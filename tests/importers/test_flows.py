"""Flow importer: CESNET-style PPI CSV, list-column Parquet and JSON lines -> quic schema, hand-computed
statistics, truncation/padding, stats mapping, held-out domains with gallery/query, errors."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xclass.importers import ImportError_
from xclass.importers.flows import import_flows


def _csv(path, rows):
    with open(path, "w") as f:
        f.write("SNI,PPI,DURATION,BYTES\n")
        for sni, ppi, dur, b in rows:
            f.write(f"{sni},\"{json.dumps(ppi)}\",{dur},{b}\n")


def test_cesnet_ppi_csv(tmp_path):
    ppi_a = [[0, 5.0, 1.5], [1, -1, 1], [1200, 1300, 80]]  # [iat ms], [dir], [size]
    long = [[0] + [1.0] * 39, [1, -1] * 20, [100] * 40]
    _csv(tmp_path / "f.csv", [("a.com", ppi_a, 9.5, 777), ("b.org", long, 1.0, 5), ("a.com", ppi_a, 2.0, 1)])
    meta = import_flows([str(tmp_path / "f.csv")], str(tmp_path / "out"), label_column="SNI", ppi_column="PPI",
                        stats_map="duration_s=DURATION", show_progress=False)
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert meta["class_names"] == ["a.com", "b.org"] and t["label"] == [0, 1, 0]
    assert t["pkt_sizes"][0][:4] == [1200, 1300, 80, 0] and t["pkt_dirs"][0][:4] == [1, -1, 1, 0]
    assert t["pkt_iat"][0][:3] == [0.0, 5.0, 1.5] and t["num_packets"] == [3, 30, 3]
    # flow 0 by hand: duration mapped = 9.5; up bytes 1280, down 1300; 2 up, 1 down; mean size 860,
    # std sqrt(((340)^2 + (440)^2 + (780)^2) / 3); mean iat (5 + 1.5) / 2
    std = np.sqrt((340 ** 2 + 440 ** 2 + 780 ** 2) / 3)
    np.testing.assert_allclose(t["flow_stats"][0], [9.5, 1280, 1300, 2, 1, 860, std, 3.25], rtol=1e-6)
    # the long flow: 30 packets kept, statistics over all 40 recorded packets (duration mapped = 1.0)
    np.testing.assert_allclose(t["flow_stats"][1], [1.0, 2000, 2000, 20, 20, 100, 0, 1.0], rtol=1e-6)


def test_list_columns_parquet_and_held_out_domains(tmp_path):
    rng = np.random.default_rng(0)
    n = 24
    table = pa.table({"domain": [f"d{i % 6}" for i in range(n)],
                      "sizes": [rng.integers(50, 1500, 5).tolist() for _ in range(n)],
                      "dirs": [[1, -1, 1, -1, -1]] * n, "times": [[0.0, 1, 2, 3, 4]] * n})
    pq.write_table(table, tmp_path / "f.parquet")
    meta = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "out"), label_column="domain",
                        sizes_column="sizes", dirs_column="dirs", iat_column="times", num_packets=8,
                        test_classes=2, show_progress=False)
    assert meta["num_classes"] == 4 and meta["test_classes"] == 2
    te = pq.read_table(tmp_path / "out" / "test.parquet").to_pydict()
    tr = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    s0 = np.array(tr["pkt_sizes"][0][:5], float)
    # computed statistics: duration = (1 + 2 + 3 + 4) ms; up = packets 0, 2; down = 1, 3, 4
    np.testing.assert_allclose(tr["flow_stats"][0], [0.010, s0[[0, 2]].sum(), s0[[1, 3, 4]].sum(), 2, 3,
                                                     s0.mean(), s0.std(), 2.5], rtol=1e-5)
    assert tr["pkt_sizes"][0][5:] == [0, 0, 0] and tr["num_packets"][0] == 5
    assert set(te["label"]) == {4, 5} and len(te["id"]) == 8 and len(te["pkt_sizes"][0]) == 8
    gq = pq.read_table(tmp_path / "out" / "gallery_query.parquet").to_pydict()
    assert sorted(gq["id"]) == sorted(te["id"]) and sum(gq["is_query"]) == 4  # 4 rows per domain: 2 + 2
    from xclass.data.validate import validate_file

    validate_file(str(tmp_path / "out" / "train.parquet"), "quic", 4)


def test_closed_set_split_by_rows(tmp_path):
    """--test-fraction 0.25: each class sends floor or ceil of 25 % of its flows to test, with its
    training label, never its first flow; the same seed gives the same split; the CLI passes it."""
    labels = [f"c{i}" for i in range(5) for _ in range(4 * (i + 1))]      # 4, 8, 12, 16, 20 flows
    table = pa.table({"label": labels, "sizes": [[100 + k, 60] for k in range(len(labels))],
                      "dirs": [[1, -1]] * len(labels), "times": [[0.0, 1.5]] * len(labels)})
    pq.write_table(table, tmp_path / "f.parquet")
    kw = dict(sizes_column="sizes", dirs_column="dirs", iat_column="times", num_packets=4, show_progress=False)
    meta = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "out"), test_fraction=0.25, seed=3, **kw)
    assert meta["num_classes"] == 5 and meta["test_classes"] == 0
    tr, te = (pq.read_table(tmp_path / "out" / f"{s}.parquet").to_pydict() for s in ("train", "test"))
    for c in range(5):
        n, k = 4 * (c + 1), te["label"].count(c)
        assert k in (n // 4, -(-n // 4)) and tr["label"].count(c) == n - k
    first = {labels.index(f"c{c}") + 100 for c in range(5)}               # size of each class's first flow
    assert not first & {s[0] for s in te["pkt_sizes"]}
    assert len(te["id"]) + len(tr["id"]) == len(labels)
    from xclass.cli.importers import main

    assert main([ "flows", "--input", str(tmp_path / "f.parquet"), "--sizes-column", "sizes", "--dirs-column",
                 "dirs", "--iat-column", "times", "--num-packets", "4", "--test-fraction", "0.25", "--seed", "3",
                 "--out", str(tmp_path / "out2"), "--no-progress"]) == 0
    assert pq.read_table(tmp_path / "out2" / "test.parquet").to_pydict() == te
    with pytest.raises(ImportError_, match="--test-fraction must be in"):
        import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "out3"), test_fraction=1.0, **kw)


def test_bad_direction_names_file_and_row(tmp_path):
    _csv(tmp_path / "f.csv", [("a", [[0, 1], [1, -1], [10, 20]], 1, 1), ("b", [[0, 1], [1, 0], [10, 20]], 1, 1)])
    with pytest.raises(ImportError_, match=r"f\.csv: row 1: directions"):
        import_flows([str(tmp_path / "f.csv")], str(tmp_path / "out"), label_column="SNI", ppi_column="PPI",
                     show_progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ImportError_, match="missing column"):
        pq.write_table(pa.table({"x": [1]}), tmp_path / "g.parquet")
        import_flows([str(tmp_path / "g.parquet")], str(tmp_path / "out"), label_column="SNI", ppi_column="PPI",
                     show_progress=False)


def test_port_and_protocol_columns_are_stored_and_checked(tmp_path):
    ppi = [[0, 1.0], [1, -1], [100, 200]]
    t = pa.table({"APP": ["dns", "web", "web"], "PPI": [json.dumps(ppi)] * 3, "DST_PORT": [53, 443, 8443],
                  "PROTOCOL": ["17", "tcp", "6"]})
    pq.write_table(t, tmp_path / "f.parquet")
    meta = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "out"), label_column="APP", ppi_column="PPI",
                        port_column="DST_PORT", proto_column="PROTOCOL", show_progress=False)
    out = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert out["server_port"] == [53, 443, 8443] and out["ip_proto"] == [17, 6, 6]
    assert meta["inputs"]["ports"]["columns"] == ["server_port", "ip_proto"]
    meta = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "o2"), label_column="APP", ppi_column="PPI",
                        show_progress=False)                    # without the options: 0 = unknown, no ports
    assert "ports" not in meta["inputs"]
    assert pq.read_table(tmp_path / "o2" / "train.parquet").to_pydict()["server_port"] == [0, 0, 0]
    pq.write_table(t.set_column(2, "DST_PORT", pa.array([53, 70000, 1])), tmp_path / "bad.parquet")
    with pytest.raises(ImportError_, match=r"bad\.parquet: row 1, column DST_PORT: a port must be"):
        import_flows([str(tmp_path / "bad.parquet")], str(tmp_path / "o3"), label_column="APP", ppi_column="PPI",
                     port_column="DST_PORT", show_progress=False)
    pq.write_table(t.set_column(3, "PROTOCOL", pa.array(["17", "icmp", "6"])), tmp_path / "bad2.parquet")
    with pytest.raises(ImportError_, match=r"row 1, column PROTOCOL: protocol must be"):
        import_flows([str(tmp_path / "bad2.parquet")], str(tmp_path / "o3"), label_column="APP", ppi_column="PPI",
                     proto_column="PROTOCOL", show_progress=False)
    assert not (tmp_path / "o3").exists()


def test_json_lines_import_like_parquet_and_bad_lines_name_the_file(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{"app": f"a{i % 3}", "sizes": rng.integers(40, 1500, 1 + i % 6).tolist(),
             "dirs": [1, -1, 1, -1, 1, -1][:1 + i % 6], "iat": [0.0, 0.5, 1.25, 2.0, 8.0, 3.5][:1 + i % 6]}
            for i in range(15)]
    n = max(len(r["sizes"]) for r in rows)
    rows[0]["iat"] = [0] + [1] * (len(rows[0]["sizes"]) - 1)                  # ints in a float column
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), tmp_path / "f.parquet")
    with gzip.open(tmp_path / "f.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    kw = dict(label_column="app", sizes_column="sizes", dirs_column="dirs", iat_column="iat", num_packets=n,
              test_fraction=0.3, seed=2, show_progress=False)
    want = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "ref"), **kw)
    got = import_flows([str(tmp_path / "f.jsonl.gz")], str(tmp_path / "out"), **kw)
    assert {k: v for k, v in got.items() if k != "source"} == {k: v for k, v in want.items() if k != "source"}
    for split in ("train", "test"):
        assert (pq.read_table(tmp_path / "out" / f"{split}.parquet").to_pydict()
                == pq.read_table(tmp_path / "ref" / f"{split}.parquet").to_pydict())
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[1]) + "\n" + '{"app": "a0", "sizes": [1, 2\n')
    with pytest.raises(ImportError_, match=r"bad\.jsonl: cannot read flows") as err:
        import_flows([str(tmp_path / "bad.jsonl")], str(tmp_path / "o2"), **kw)
    assert not (tmp_path / "o2").exists()
    (tmp_path / "latin.jsonl").write_bytes(b'{"app": "caf\xe9", "sizes": [1], "dirs": [1], "iat": [0]}\n')
    with pytest.raises(ImportError_, match=r"latin\.jsonl: cannot read flows \(.*Invalid UTF8"):
        import_flows([str(tmp_path / "latin.jsonl")], str(tmp_path / "o4"), **kw)
    (tmp_path / "latin.csv").write_bytes(b'app,sizes,dirs,iat\ncaf\xe9,[1],[1],[0]\n')
    with pytest.raises(ImportError_, match=r"latin\.csv: column app: not UTF-8 text"):
        import_flows([str(tmp_path / "latin.csv")], str(tmp_path / "o5"), **kw)
    (tmp_path / "nolabel.ndjson").write_text(json.dumps({"sizes": [1], "dirs": [1], "iat": [0]}) + "\n")
    with pytest.raises(ImportError_, match=r"nolabel\.ndjson: missing column\(s\) \['app'\]"):
        import_flows([str(tmp_path / "nolabel.ndjson")], str(tmp_path / "o3"), **kw)
    assert "\n" not in str(err.value)


def test_a_parser_message_with_a_line_break_is_printed_on_one_line(tmp_path, capsys):
    from xclass.cli.importers import main

    (tmp_path / "nl.csv").write_text('label,sizes,dirs,iat\n"x\ny",1\n')    # the parser quotes the row
    assert main(["flows", "--input", str(tmp_path / "nl.csv"), "--sizes-column", "sizes", "--dirs-column", "dirs",
                 "--iat-column", "iat", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'nl.csv: cannot read flows' in err and '"x / y"' in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind,extra,message", [
    ("flows", ["--num-packets", "0"], "--num-packets must be >= 1, got 0"),
    ("flows", ["--test-classes", "-1"], "--test-classes must be >= 0, got -1"),
    ("pcap", ["--idle-timeout", "0"], "--idle-timeout must be > 0, got 0.0"),
    ("pcap", ["--min-flows", "0"], "--min-flows must be >= 1, got 0"),
    ("pcap", ["--max-flows", "-1"], "--max-flows must be >= 0, got -1"),
    ("audio", ["--n-mels", "0"], "--n-mels must be >= 1, got 0"),
    ("faces", ["--impostor-ratio", "-1"], "--impostor-ratio must be > 0, got -1.0"),
])
def test_out_of_range_options_are_one_line(tmp_path, capsys, kind, extra, message):
    from xclass.cli.importers import main

    src = {"flows": ["--input", "f.csv", "--sizes-column", "s", "--dirs-column", "d", "--iat-column", "i"],
           "pcap": ["--input", "c.pcap", "--label-sni"], "audio": ["--root", str(tmp_path)],
           "faces": ["--root", str(tmp_path)]}[kind]
    assert main([kind, *src, "--out", str(tmp_path / "o"), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xclass import: error: {message}"]
    assert not (tmp_path / "o").exists()


def test_max_flows_keeps_a_spread_sample_of_each_large_class(tmp_path):
    """--max-flows 5: classes with more flows keep exactly 5, spread over the file (not the first
    5), the others all; the cap comes before --test-fraction; the CLI passes it; meta counts what
    was left out."""
    labels = [f"c{i}" for i in range(4) for _ in range(3 * i + 2)]          # 2, 5, 8, 11 flows
    sizes = list(range(100, 100 + len(labels)))                               # a flow's size = its row + 100
    table = pa.table({"label": labels, "sizes": [[s, 60] for s in sizes],
                      "dirs": [[1, -1]] * len(labels), "times": [[0.0, 1.5]] * len(labels)})
    pq.write_table(table, tmp_path / "f.parquet")
    kw = dict(sizes_column="sizes", dirs_column="dirs", iat_column="times", num_packets=4, show_progress=False)
    meta = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "out"), max_flows=5, seed=1, **kw)
    tr = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert [tr["label"].count(c) for c in range(4)] == [2, 5, 5, 5]
    assert meta["source"]["max_flows"] == 5 and meta["source"]["capped_flows"] == 3 + 6
    rows = [s[0] - 100 for s, c in zip(tr["pkt_sizes"], tr["label"]) if c == 3]
    first = labels.index("c3")
    assert rows != list(range(first, first + 5)) and max(rows) >= first + 8   # reaches the class's last rows
    meta = import_flows([str(tmp_path / "f.parquet")], str(tmp_path / "out2"), max_flows=5, seed=1,
                        test_fraction=0.4, **kw)
    te = pq.read_table(tmp_path / "out2" / "test.parquet").to_pydict()
    tr2 = pq.read_table(tmp_path / "out2" / "train.parquet").to_pydict()
    assert [tr2["label"].count(c) + te["label"].count(c) for c in range(4)] == [2, 5, 5, 5]
    assert sorted(tr2["pkt_sizes"] + te["pkt_sizes"]) == sorted(tr["pkt_sizes"])   # the same flows kept
    from xclass.cli.importers import main

    assert main(["flows", "--input", str(tmp_path / "f.parquet"), "--sizes-column", "sizes", "--dirs-column",
                 "dirs", "--iat-column", "times", "--num-packets", "4", "--max-flows", "5", "--seed", "1",
                 "--out", str(tmp_path / "out3"), "--no-progress"]) == 0
    assert pq.read_table(tmp_path / "out3" / "train.parquet").to_pydict() == tr


def test_max_flows_with_one_row_per_packet(tmp_path):
    rows = "".join(f"f{k},{t},{50 + k},1,{'big' if k < 6 else 'small'}\n" for k in range(8) for t in (1, 2))
    (tmp_path / "p.csv").write_text("id,t,size,dir,cls\n" + rows)
    meta = import_flows([str(tmp_path / "p.csv")], str(tmp_path / "out"), flow_id_column="id", time_column="t",
                        size_column="size", direction_column="dir", label_column="cls", max_flows=3,
                        show_progress=False)
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert meta["class_names"] == ["big", "small"] and sorted(t["label"]) == [0, 0, 0, 1, 1]
    assert meta["source"]["capped_flows"] == 3


def test_each_row_names_its_input_file(tmp_path):
    """``source_file``: the row's file as an index into meta.json source.files; the validator
    accepts the column."""
    for i in range(2):
        n = 3 + i
        pq.write_table(pa.table({"label": [f"c{k % 2}" for k in range(n)], "sizes": [[100 + i, 60]] * n,
                                 "dirs": [[1, -1]] * n, "times": [[0.0, 1.0]] * n}), tmp_path / f"f{i}.parquet")
    files = [str(tmp_path / "f0.parquet"), str(tmp_path / "f1.parquet")]
    meta = import_flows(files, str(tmp_path / "out"), sizes_column="sizes", dirs_column="dirs", iat_column="times",
                        num_packets=2, show_progress=False)
    t = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert [s[0] - 100 for s in t["pkt_sizes"]] == t["source_file"] == [0, 0, 0, 1, 1, 1, 1]
    assert meta["source"]["files"] == [os.path.abspath(f) for f in files]
    from xclass.data.validate import validate_file

    validate_file(str(tmp_path / "out" / "train.parquet"), "quic", 2)


def test_a_folder_input_reads_the_flow_files_below_it(tmp_path, capsys):
    d = tmp_path / "flows"
    (d / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"label": ["a", "b"], "sizes": [[100, 60]] * 2, "dirs": [[1, -1]] * 2,
                             "times": [[0.0, 1.0]] * 2}), d / "f0.parquet")
    (d / "sub" / "f1.jsonl").write_text(json.dumps({"label": "c", "sizes": [101, 60], "dirs": [1, -1],
                                                    "times": [0.0, 2.0]}) + "\n")
    (d / "README.md").write_text("not flows")
    meta = import_flows([str(d)], str(tmp_path / "out"), sizes_column="sizes", dirs_column="dirs",
                        iat_column="times", num_packets=2, show_progress=False)
    assert [os.path.relpath(f, d) for f in meta["source"]["files"]] == ["f0.parquet", os.path.join("sub", "f1.jsonl")]
    assert meta["class_names"] == ["a", "b", "c"]
    (tmp_path / "empty").mkdir()
    from xclass.cli.importers import main

    assert main(["flows", "--input", str(tmp_path / "empty"), "--sizes-column", "s", "--dirs-column", "d",
                 "--iat-column", "i", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "empty: no flow file in this folder" in capsys.readouterr().err


def test_upper_case_suffixes_pick_the_same_reader_as_the_folder_match(tmp_path):
    d = tmp_path / "flows"
    d.mkdir()
    pq.write_table(pa.table({"label": ["a", "b"], "sizes": [[100, 60]] * 2, "dirs": [[1, -1]] * 2,
                             "times": [[0.0, 1.0]] * 2}), d / "F0.PARQUET")
    meta = import_flows([str(d)], str(tmp_path / "out"), sizes_column="sizes", dirs_column="dirs",
                        iat_column="times", num_packets=2, show_progress=False)
    assert meta["class_names"] == ["a", "b"]
