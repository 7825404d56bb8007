"""import pcap: captures written with dpkt (an independent writer/parser), hand-computed flows,
pcap == pcapng, TLS SNI, label files, nDPI labels (when ndpiReader is installed), errors."""
import json
import os
import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest

dpkt = pytest.importorskip("dpkt")

from xclass.cli.importers import main
from xclass.importers import ImportError_  # noqa: E402
from xclass.importers.pcap import import_pcap, labelled_flows  # noqa: E402
from xclass.importers.pcap_read import assemble_flows, read_packets, tls_sni  # noqa: E402

C4, S4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
C6, S6 = bytes(15) + b"\x01", bytes(15) + b"\x02"


def client_hello(name: str) -> bytes:
    sni = name.encode()
    ext = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    ext = struct.pack("!HH", 10, 4) + b"\x00\x02\x00\x17" + ext          # another extension first
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _tcp(src, dst, sp, dp, flags, data=b""):
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=dpkt.tcp.TCP(sport=sp, dport=dp, flags=flags, data=data))
    ip.len = len(bytes(ip))
    return dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x01" * 6, type=0x0800, data=ip)


def _udp(src, dst, sp, dp, data, v6=False):
    u = dpkt.udp.UDP(sport=sp, dport=dp, data=data)
    u.ulen = len(bytes(u))
    if v6:
        ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=64, data=u, plen=len(bytes(u)))
        return dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x01" * 6, type=0x86DD, data=ip)
    ip = dpkt.ip.IP(src=src, dst=dst, p=17, data=u)
    ip.len = len(bytes(ip))
    return dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x01" * 6, type=0x0800, data=ip)


def capture():
    """(time, frame) list: a TLS flow with SNI, a UDP flow, an IPv6 UDP flow, an ARP frame."""
    hello = client_hello("www.example.org")
    arp = dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\xff" * 6, type=0x0806, data=b"\x00" * 28)
    return [
        (100.000, _tcp(C4, S4, 5555, 443, dpkt.tcp.TH_SYN)),
        (100.010, _tcp(S4, C4, 443, 5555, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)),
        (100.020, arp),
        (100.030, _tcp(C4, S4, 5555, 443, dpkt.tcp.TH_ACK, hello)),
        (100.035, _udp(C4, S4, 40000, 53, b"q" * 30)),
        (100.070, _tcp(S4, C4, 443, 5555, dpkt.tcp.TH_ACK, b"s" * 1000)),
        (100.080, _udp(S4, C4, 53, 40000, b"r" * 90)),
        (100.090, _udp(C6, S6, 7000, 8000, b"x" * 10, v6=True)),
        (100.130, _tcp(C4, S4, 5555, 443, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)),
    ]


def write(path, frames, ng=False):
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f) if ng else dpkt.pcap.Writer(f)
        for ts, fr in frames:
            w.writepkt(bytes(fr), ts=ts)
    return str(path)


def test_tls_sni_hand_built_and_dpkt():
    h = client_hello("a.example")
    assert tls_sni(h) == "a.example" and tls_sni(h[:20]) is None and tls_sni(b"\x17" + h[1:]) is None
    rec = dpkt.ssl.TLSRecord(h)                               # dpkt parses the same ClientHello
    exts = dict(dpkt.ssl.TLSHandshake(rec.data).data.extensions)
    assert exts[0][5:].decode() == "a.example"


@pytest.mark.parametrize("ng", [False, True])
def test_flows_hand_computed(tmp_path, ng):
    st = {}
    flows = assemble_flows(read_packets(write(tmp_path / "c.cap", capture(), ng), st), keep=3)
    assert st == {"packets": 9, "skipped": 1}
    tls, dns, v6 = flows
    ip_len = lambda fr: len(bytes(fr.data))  # noqa: E731
    fr = [f for _, f in capture()]
    assert tls.proto == 6 and tls.client == (C4, 5555) and tls.n == 5 and tls.n_up == 3
    assert tls.sizes == [ip_len(fr[0]), ip_len(fr[1]), ip_len(fr[3])]           # first 3 kept
    assert tls.dirs == [1, -1, 1]
    np.testing.assert_allclose(tls.iat_ms, [0, 10, 20], atol=1e-6)
    assert tls.bytes_up == ip_len(fr[0]) + ip_len(fr[3]) + ip_len(fr[8])
    assert tls.bytes_down == ip_len(fr[1]) + ip_len(fr[5]) and tls.sni == "www.example.org"
    assert tls.span_ms == pytest.approx(130.0)
    assert dns.sizes == [20 + 8 + 30, 20 + 8 + 90] and dns.dirs == [1, -1] and dns.sni is None
    assert v6.client == (C6, 7000) and v6.sizes == [40 + 8 + 10]


def test_idle_timeout_and_tcp_reuse(tmp_path):
    fr = [(0.0, _udp(C4, S4, 1, 2, b"a")), (50.0, _udp(S4, C4, 2, 1, b"b")), (500.0, _udp(C4, S4, 1, 2, b"c")),
          (501.0, _tcp(C4, S4, 9, 10, dpkt.tcp.TH_SYN)), (502.0, _tcp(C4, S4, 9, 10, dpkt.tcp.TH_RST)),
          (503.0, _tcp(C4, S4, 9, 10, dpkt.tcp.TH_SYN))]
    flows = assemble_flows(read_packets(write(tmp_path / "c.pcap", fr), {}), keep=5, idle_timeout=120)
    assert [f.n for f in flows] == [2, 1, 2, 1]


def test_import_with_label_files_matches_either_direction(tmp_path):
    cap = write(tmp_path / "c.pcap", capture())
    (tmp_path / "l.csv").write_text("src_ip,src_port,dst_ip,dst_port,proto,label\n"
                                    "10.0.0.2,443,10.0.0.1,5555,tcp,web\n10.0.0.1,40000,10.0.0.2,53,17,dns\n")
    meta = import_pcap([cap], str(tmp_path / "o"), labels=str(tmp_path / "l.csv"), num_packets=4,
                       show_progress=False)
    assert meta["class_names"] == ["dns", "web"] and meta["source"]["unlabelled_flows"] == 1
    t = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    web = t["label"].index(1)
    assert t["pkt_dirs"][web] == [1, -1, 1, -1] and t["num_packets"][web] == 4
    assert t["flow_stats"][web][3:5] == [3, 2]                                # packets up / down, all packets
    assert t["server_port"][web] == 443 and t["ip_proto"][web] == 6           # service port + protocol
    dns = t["label"].index(0)
    assert t["server_port"][dns] == 53 and t["ip_proto"][dns] == 17
    assert meta["inputs"]["ports"]["columns"] == ["server_port", "ip_proto"]
    (tmp_path / "l.jsonl").write_text(json.dumps({"src_ip": "::2", "src_port": 8000, "dst_ip": "::1",
                                                  "dst_port": 7000, "proto": "udp", "label": "v6"}) + "\n")
    flows, counts = labelled_flows([cap], labels=str(tmp_path / "l.jsonl"))
    assert [n for n, _ in flows] == ["v6"] and counts["unlabelled_flows"] == 2
    flows, _ = labelled_flows([cap], sni=True)
    assert [n for n, _ in flows] == ["www.example.org"]


def test_errors_name_file_and_packet(tmp_path, capsys):
    good = open(write(tmp_path / "c.pcap", capture()), "rb").read()
    (tmp_path / "cut.pcap").write_bytes(good[:-7])                            # last record cut short
    with pytest.raises(ImportError_, match=r"cut\.pcap: packet 9: cannot read the capture"):
        labelled_flows([str(tmp_path / "cut.pcap")], sni=True)
    (tmp_path / "x.pcap").write_bytes(b"hello world")
    assert main(["pcap", "--input", str(tmp_path / "x.pcap"), "--label-sni", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "x.pcap: not a pcap or pcapng file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    (tmp_path / "latin.csv").write_bytes(b"src_ip,src_port,dst_ip,dst_port,proto,label\n10.0.0.1,1,10.0.0.2,2,6,caf\xe9\n")
    assert main(["pcap", "--input", str(tmp_path / "c.pcap"), "--labels", str(tmp_path / "latin.csv"), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "latin.csv: line 2: not UTF-8 text" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.csv").write_text("src_ip,src_port,dst_ip,dst_port,proto,label\n1.2.3,1,1.2.3.4,2,6,x\n")
    with pytest.raises(ImportError_, match=r"bad\.csv: line 2: bad address"):
        labelled_flows([str(tmp_path / "c.pcap")], labels=str(tmp_path / "bad.csv"))


@pytest.mark.skipif(shutil.which("ndpiReader") is None, reason="nDPI's ndpiReader not installed")
def test_ndpi_labels_and_packet_counts(tmp_path):
    q = dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="www.example.org", type=1, cls=1)])
    r = dpkt.dns.DNS(id=7, op=dpkt.dns.DNS_RA | 0x8000, qd=q.qd,
                     an=[dpkt.dns.DNS.RR(name="www.example.org", type=1, cls=1, ttl=60, rdata=S4)])
    fr = [(1.0, _udp(C4, S4, 40001, 53, bytes(q))), (1.01, _udp(S4, C4, 53, 40001, bytes(r)))] + capture()
    flows, _ = labelled_flows([write(tmp_path / "c.pcap", fr)], ndpi=True)
    names = {n for n, _ in flows}
    assert "DNS" in names and any(n.startswith("TLS") for n in names), names
    import gzip                                                               # the same from a gzip capture

    (tmp_path / "c.pcap.gz").write_bytes(gzip.compress(open(tmp_path / "c.pcap", "rb").read()))
    flows_gz, _ = labelled_flows([str(tmp_path / "c.pcap.gz")], ndpi=True)
    assert sorted(n for n, _ in flows_gz) == sorted(n for n, _ in flows)


def test_unsupported_link_type_is_named(tmp_path):
    path = tmp_path / "wifi.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=127)                       # 802.11 with radiotap: not read
        w.writepkt(bytes(40), ts=1.0)
    with pytest.raises(ImportError_, match=r"wifi\.pcap: link type 127 is not supported"):
        labelled_flows([str(path)], sni=True)
    flows, counts = labelled_flows([str(path), write(tmp_path / "c.pcap", capture())], sni=True, skip_bad=True)
    assert len(flows) == 1 and len(counts["skipped_files"]) == 1 and "wifi.pcap" in counts["skipped_files"][0]


def _flow_tuples(path):
    st = {}
    flows = assemble_flows(read_packets(str(path), st), keep=30)
    return st, [(f.proto, f.client, f.server, f.sizes, f.dirs, f.iat_ms, f.sni) for f in flows]


@pytest.mark.parametrize("link,framing", [(9, "address/control + 2-byte protocol"), (9, "2-byte protocol"),
                                          (9, "1-byte protocol"), (50, "address/control + 2-byte protocol"),
                                          (104, "cisco hdlc")])
def test_ppp_and_cisco_hdlc_frames_give_the_ethernet_flows(tmp_path, link, framing):
    """The same IP packets behind PPP (address/control, 2-byte or compressed 1-byte protocol) or
    Cisco HDLC read as the same flows as behind Ethernet; the ARP frame becomes a non-IP frame
    (LCP, or an ARP type behind HDLC) and is skipped."""
    frames = []
    for ts, fr in capture():
        ip, etype = bytes(fr.data), fr.type
        if framing == "cisco hdlc":
            frames.append((ts, b"\x0f\x00" + etype.to_bytes(2, "big") + ip))
            continue
        proto = {0x0800: 0x21, 0x86DD: 0x57}.get(etype, 0xC021)
        pb = bytes([proto]) if framing == "1-byte protocol" and proto < 256 else proto.to_bytes(2, "big")
        frames.append((ts, (b"\xff\x03" if framing.startswith("address") else b"") + pb + ip))
    path = tmp_path / "l.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=link)
        for ts, fr in frames:
            w.writepkt(fr, ts=ts)
    assert _flow_tuples(path) == _flow_tuples(write(tmp_path / "e.pcap", capture()))


@pytest.mark.parametrize("ng", [False, True])
def test_gzip_captures_read_as_the_plain_ones_and_damage_is_named(tmp_path, ng):
    import gzip

    plain = write(tmp_path / "c.cap", capture(), ng)
    data = open(plain, "rb").read()
    (tmp_path / "c.cap.gz").write_bytes(gzip.compress(data))
    assert _flow_tuples(tmp_path / "c.cap.gz") == _flow_tuples(plain)
    cut = gzip.compress(data)
    (tmp_path / "cut.gz").write_bytes(cut[: len(cut) // 2])                    # truncated
    bad = bytearray(cut)
    bad[len(bad) // 2] ^= 0xFF                                                # damaged deflate data
    (tmp_path / "bad.gz").write_bytes(bytes(bad))
    for name in ("cut.gz", "bad.gz"):
        with pytest.raises(ImportError_, match=rf"{name.replace('.', '[.]')}: packet \d+: cannot read the capture"):
            _flow_tuples(tmp_path / name)


def test_sizes_above_int16_are_capped_and_statistics_keep_true_bytes(tmp_path):
    """A 40,028-byte IP packet (offload captures) used to wrap to a negative int16 size."""
    cap = write(tmp_path / "c.pcap", [(0.0, _udp(C4, S4, 1, 2, b"a" * 40000)), (0.1, _udp(S4, C4, 2, 1, b"b"))])
    (tmp_path / "l.csv").write_text("src_ip,src_port,dst_ip,dst_port,proto,label\n10.0.0.1,1,10.0.0.2,2,udp,big\n")
    import_pcap([cap], str(tmp_path / "o"), labels=str(tmp_path / "l.csv"), num_packets=3, show_progress=False)
    t = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    assert t["pkt_sizes"][0] == [32767, 20 + 8 + 1, 0]
    assert t["flow_stats"][0][1:3] == [20 + 8 + 40000, 20 + 8 + 1]          # bytes up / down


def test_service_port_is_the_well_known_side_when_a_capture_starts_with_the_reply(tmp_path):
    fr = [(0.0, _udp(S4, C4, 123, 40000, b"reply")), (0.1, _udp(C4, S4, 40000, 123, b"q")),   # NTP reply first
          (1.0, _udp(C4, S4, 50000, 8080, b"a")), (2.0, _udp(C4, S4, 999, 5000, b"b"))]
    (tmp_path / "l.csv").write_text("src_ip,src_port,dst_ip,dst_port,proto,label\n"
                                    "10.0.0.1,40000,10.0.0.2,123,udp,ntp\n10.0.0.1,50000,10.0.0.2,8080,udp,web\n"
                                    "10.0.0.1,999,10.0.0.2,5000,udp,odd\n")
    import_pcap([write(tmp_path / "c.pcap", fr)], str(tmp_path / "o"), labels=str(tmp_path / "l.csv"),
                num_packets=2, show_progress=False)
    t = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    port = {t["label"][i]: t["server_port"][i] for i in range(3)}
    # labels: ntp 0, odd 1, web 2. ntp: the first sender (the "client") has 123, the only port
    # below 1,024; odd: likewise 999 against 5000; web: neither is, so the server's 8080
    assert port == {0: 123, 1: 999, 2: 8080}


def test_split_by_capture_keeps_shared_labels_closed_and_holds_out_the_rest(tmp_path, capsys):
    """--test-regex: flows of matching captures go to test; a label also met in the other capture
    keeps its training index (closed set), a label met only there is held out (index >= C)."""
    a, b = write(tmp_path / "a.pcap", capture()), write(tmp_path / "b.pcap", capture())
    web, dns = "10.0.0.2,443,10.0.0.1,5555,tcp", "10.0.0.1,40000,10.0.0.2,53,17"
    (tmp_path / "l.csv").write_text("src_ip,src_port,dst_ip,dst_port,proto,label,file\n"
                                    f"{web},web,a.pcap\n{dns},dns,a.pcap\n{web},web,b.pcap\n{dns},newdns,b.pcap\n")
    labels = str(tmp_path / "l.csv")
    meta = import_pcap([a, b], str(tmp_path / "o"), labels=labels, test_regex=r"b\.pcap$", show_progress=False)
    assert meta["class_names"] == ["dns", "web", "newdns"] and meta["num_classes"] == 2
    assert meta["source"]["test_regex"] == r"b\.pcap$"
    train = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    test = pq.read_table(tmp_path / "o" / "test.parquet").to_pydict()
    assert sorted(train["label"]) == [0, 1] and sorted(test["label"]) == [1, 2]
    assert sorted(train["id"] + test["id"]) == [0, 1, 2, 3]
    assert set(train["source_file"]) == {0} and set(test["source_file"]) == {1}   # a.pcap, b.pcap
    assert [os.path.basename(f) for f in meta["source"]["files"]] == ["a.pcap", "b.pcap"]
    base = ["pcap", "--input", a, b, "--labels", labels, "--out", str(tmp_path / "p")]
    for extra, msg in ((["--test-regex", "nomatch"], "matches no capture"),
                       (["--test-regex", "pcap$"], "matches every capture"),
                       (["--test-regex", "("], "not a regular expression"),
                       (["--test-regex", "b", "--test-fraction", "0.3"], "cannot be combined")):
        assert main(base + extra) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "p").exists()


def test_max_flows_caps_each_side_of_a_split_by_capture(tmp_path):
    """--max-flows 1 with --test-regex: a label keeps one training and one test flow (capping the
    label as a whole could keep only its test flow and leave a closed-set label untrained)."""
    caps = [write(tmp_path / f"{n}.pcap", capture()) for n in "abc"]
    web, dns = "10.0.0.2,443,10.0.0.1,5555,tcp", "10.0.0.1,40000,10.0.0.2,53,17"
    (tmp_path / "l.csv").write_text(f"src_ip,src_port,dst_ip,dst_port,proto,label\n{web},web\n{dns},dns\n")
    for seed in range(4):
        meta = import_pcap(caps, str(tmp_path / f"o{seed}"), labels=str(tmp_path / "l.csv"), test_regex=r"c\.pcap$",
                           max_flows=1, seed=seed, show_progress=False)
        train = pq.read_table(tmp_path / f"o{seed}" / "train.parquet").to_pydict()
        test = pq.read_table(tmp_path / f"o{seed}" / "test.parquet").to_pydict()
        assert sorted(train["label"]) == [0, 1] and sorted(test["label"]) == [0, 1]
        assert meta["source"]["capped_flows"] == 2


def test_a_folder_input_reads_the_captures_below_it(tmp_path, capsys):
    import gzip

    d = tmp_path / "caps"
    (d / "sub").mkdir(parents=True)
    write(d / "a.pcap", capture())
    (d / "sub" / "b.pcapng.gz").write_bytes(gzip.compress(open(write(tmp_path / "b.pcapng", capture(), True),
                                                               "rb").read()))
    (d / "notes.txt").write_text("not a capture")
    meta = import_pcap([str(d)], str(tmp_path / "o"), sni=True, show_progress=False)
    assert [os.path.relpath(f, d) for f in meta["source"]["files"]] == ["a.pcap", os.path.join("sub", "b.pcapng.gz")]
    t = pq.read_table(tmp_path / "o" / "train.parquet").to_pydict()
    assert sorted(t["source_file"]) == [0, 1]                          # the TLS flow of each capture
    (tmp_path / "empty").mkdir()
    assert main(["pcap", "--input", str(tmp_path / "empty"), "--label-sni", "--out", str(tmp_path / "p")]) == 2
    assert "empty: no capture file in this folder" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_workers_give_the_dataset_of_one_process(tmp_path):
    """import pcap --workers 2: captures read in two processes, a damaged one skipped in its
    place (--skip-bad), the same dataset and counts as one process."""
    caps = [write(tmp_path / f"{n}.pcap", capture()) for n in "abcd"]
    good = open(caps[1], "rb").read()
    (tmp_path / "b.pcap").write_bytes(good[:-7])                              # b is cut short
    web, dns = "10.0.0.2,443,10.0.0.1,5555,tcp", "10.0.0.1,40000,10.0.0.2,53,17"
    (tmp_path / "l.csv").write_text(f"src_ip,src_port,dst_ip,dst_port,proto,label\n{web},web\n{dns},dns\n")
    metas = [import_pcap(caps, str(tmp_path / f"o{w}"), labels=str(tmp_path / "l.csv"), test_fraction=0.5,
                         skip_bad=True, show_progress=False, workers=w) for w in (1, 2)]
    assert metas[0]["source"] == metas[1]["source"] and len(metas[0]["source"]["skipped_files"]) == 1
    assert "b.pcap" in metas[0]["source"]["skipped_files"][0]
    for split in ("train", "test"):
        assert pq.read_table(tmp_path / "o1" / f"{split}.parquet").equals(pq.read_table(tmp_path / "o2" / f"{split}.parquet"))
    with pytest.raises(ImportError_, match=r"b\.pcap: packet 9"):
        import_pcap(caps, str(tmp_path / "o3"), labels=str(tmp_path / "l.csv"), show_progress=False, workers=2)
    assert not (tmp_path / "o3").exists()
