"""Packet captures -> bidirectional flows, for ``xclass import pcap``.

The capture container is read here for pcap (µs or ns, either byte order; a record cut short
is an error) and with ``dpkt`` for pcapng, either of them gzip-compressed (as Wireshark writes
``.pcap.gz`` / ``.pcapng.gz``); link, IP and transport headers are parsed here: Ethernet (with
802.1Q / 802.1ad tags, PPPoE sessions, MPLS), Linux cooked v1/v2, BSD loopback/null, raw IP,
PPP (also in HDLC framing) and Cisco HDLC; IPv4 and IPv6 (extension headers skipped); TCP and
UDP. Other packets (ARP, ICMP, non-first fragments, ...) are counted and skipped.

A flow is the packets of one 5-tuple in either direction (client = source of its first packet,
direction +1 client -> server, -1 back), ended by ``idle_timeout`` seconds without a packet or,
for TCP, by a new SYN after a FIN/RST. Packet size = the IP packet length from its header (so
a capture truncated by snaplen still gives true sizes). TLS SNI is read from the ClientHello in
the first client payloads of a TCP flow, and for QUIC (UDP) from the ClientHello inside the
client's first Initial packets, decrypted with their public initial keys
(:mod:`xclass.importers.quic_initial`).
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from xclass.importers.common import ImportError_
from xclass.importers.quic_initial import InitialAssembler

Endpoint = Tuple[bytes, int]
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
LINK_TYPES = {0: "BSD loopback", 1: "Ethernet", 9: "PPP", 12: "raw IP", 14: "raw IP", 50: "PPP in HDLC framing",
              101: "raw IP", 104: "Cisco HDLC", 108: "OpenBSD loopback", 113: "Linux cooked", 228: "raw IPv4",
              229: "raw IPv6", 276: "Linux cooked v2"}
PPP_IP = {0x21: 0x0800, 0x57: 0x86DD}  # PPP protocol numbers of IPv4 and IPv6


@dataclass
class Packet:
    ts: float
    proto: int
    src: Endpoint
    dst: Endpoint
    size: int
    payload: bytes
    tcp_flags: int = 0


def _ip_layer(link: int, buf: bytes) -> Optional[bytes]:
    """The IP packet inside a link-layer frame, or None when it carries no IP."""
    if link == 1:  # Ethernet
        off, etype = 14, struct.unpack_from("!H", buf, 12)[0] if len(buf) >= 14 else 0
        while etype in (0x8100, 0x88A8) and len(buf) >= off + 4:
            etype, off = struct.unpack_from("!H", buf, off + 2)[0], off + 4
        if etype == 0x8864 and len(buf) >= off + 8:  # PPPoE session: 6-byte header, PPP protocol
            ppp = struct.unpack_from("!H", buf, off + 6)[0]
            etype, off = PPP_IP.get(ppp, 0), off + 8
        if etype == 0x8847:  # MPLS: skip labels up to the bottom of the stack
            while len(buf) >= off + 4 and not buf[off + 2] & 1:
                off += 4
            off += 4
            etype = {4: 0x0800, 6: 0x86DD}.get(buf[off] >> 4, 0) if len(buf) > off else 0
        return buf[off:] if etype in (0x0800, 0x86DD) else None
    if link == 113:  # Linux cooked v1
        return buf[16:] if len(buf) >= 16 and struct.unpack_from("!H", buf, 14)[0] in (0x0800, 0x86DD) else None
    if link == 276:  # Linux cooked v2
        return buf[20:] if len(buf) >= 20 and struct.unpack_from("!H", buf, 0)[0] in (0x0800, 0x86DD) else None
    if link in (0, 108):  # BSD loopback: 4-byte address family, host (0) or network (108) order
        if len(buf) < 4:
            return None
        fam = min(struct.unpack_from("<I", buf)[0], struct.unpack_from(">I", buf)[0])
        return buf[4:] if fam in (2, 24, 28, 30) else None
    if link in (12, 14, 101, 228, 229):  # raw IP
        return buf
    if link in (9, 50):
        return _ppp(buf)
    if link == 104:  # Cisco HDLC: address, control, then an Ethernet type
        return buf[4:] if len(buf) >= 4 and struct.unpack_from("!H", buf, 2)[0] in (0x0800, 0x86DD) else None
    raise ValueError(unsupported_link(link))


def unsupported_link(link: int) -> str:
    """The message for a capture whose link type is not in LINK_TYPES."""
    return f"link type {link} is not supported (supported: {', '.join(sorted(set(LINK_TYPES.values())))})"


def _ppp(buf: bytes) -> Optional[bytes]:
    """The IP packet of a PPP frame: an optional address / control pair (0xff 0x03), then the
    protocol, one byte when compressed (odd first byte) or two."""
    off = 2 if buf[:2] == b"\xff\x03" else 0
    if len(buf) <= off:
        return None
    if buf[off] & 1:
        proto, off = buf[off], off + 1
    elif len(buf) >= off + 2:
        proto, off = struct.unpack_from("!H", buf, off)[0], off + 2
    else:
        return None
    return buf[off:] if proto in PPP_IP else None


def open_capture(path: str):
    """A binary file object of the capture, decompressed on the fly when the file is gzip."""
    f = open(path, "rb")
    if f.read(2) == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


def parse_ip(ts: float, ip: bytes) -> Optional[Packet]:
    """A TCP/UDP packet from IP bytes, or None (not TCP/UDP, a non-first fragment, too short)."""
    if len(ip) < 20:
        return None
    ver = ip[0] >> 4
    if ver == 4:
        ihl = (ip[0] & 15) * 4
        size, proto = struct.unpack_from("!H", ip, 2)[0], ip[9]
        if struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:
            return None
        src, dst, l4 = ip[12:16], ip[16:20], ip[ihl:size if size >= ihl else None]
    elif ver == 6 and len(ip) >= 40:
        size, proto, src, dst, off = 40 + struct.unpack_from("!H", ip, 4)[0], ip[6], ip[8:24], ip[24:40], 40
        while proto in (0, 43, 60, 44) and len(ip) >= off + 8:
            if proto == 44 and struct.unpack_from("!H", ip, off + 2)[0] & 0xFFF8:
                return None
            proto, off = ip[off], off + (8 if proto == 44 else (ip[off + 1] + 1) * 8)
        l4 = ip[off:size]
    else:
        return None
    if proto == 6 and len(l4) >= 20:
        sp, dp = struct.unpack_from("!HH", l4)
        return Packet(ts, 6, (src, sp), (dst, dp), size, l4[(l4[12] >> 4) * 4:], l4[13])
    if proto == 17 and len(l4) >= 8:
        sp, dp = struct.unpack_from("!HH", l4)
        return Packet(ts, 17, (src, sp), (dst, dp), size, l4[8:])
    return None


def _pcap_records(f, path: str) -> Tuple[int, Iterator[Tuple[float, bytes]]]:
    """(link type, (time s, frame) per record) of a classic pcap file (µs or ns, either byte
    order). A record cut short raises ValueError (dpkt's reader would return it silently)."""
    head = f.read(24)
    if len(head) < 24:
        raise ValueError("file header cut short")
    order = "<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    div = 1e9 if head[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6
    link = struct.unpack_from(order + "I", head, 20)[0] & 0xFFFF

    def records() -> Iterator[Tuple[float, bytes]]:
        while True:
            rh = f.read(16)
            if not rh:
                return
            if len(rh) < 16:
                raise ValueError(f"record header cut short ({len(rh)} of 16 bytes)")
            sec, frac, incl, _ = struct.unpack(order + "IIII", rh)
            if incl > 1 << 18:
                raise ValueError(f"record length {incl} is implausible")
            buf = f.read(incl)
            if len(buf) < incl:
                raise ValueError(f"record cut short ({len(buf)} of {incl} bytes)")
            yield sec + frac / div, buf

    return link, records()


def read_packets(path: str, stats: Dict[str, int]) -> Iterator[Packet]:
    """TCP/UDP packets of one capture in file order; ``stats`` counts packets and skips.
    A damaged capture raises ImportError_ naming the file and the packet number (1-based)."""
    try:
        import dpkt
        dpkt_errors: tuple = (dpkt.UnpackError, dpkt.NeedData)
    except ImportError:  # only pcapng needs it
        dpkt, dpkt_errors = None, ()
    n = 0
    try:
        with open_capture(path) as f:
            magic = f.read(4)
            f.seek(0)
            if magic == PCAPNG_MAGIC:
                if dpkt is None:
                    raise ImportError_(f"{path}: reading pcapng needs dpkt (pip install 'xclass[pcap]')", file=path)
                reader = dpkt.pcapng.Reader(f)
                link, records = reader.datalink(), iter(reader)
            elif magic in PCAP_MAGICS:
                link, records = _pcap_records(f, path)
            else:
                raise ImportError_(f"{path}: not a pcap or pcapng file (starts with {magic.hex() or 'nothing'})",
                                   file=path)
            if link not in LINK_TYPES:
                raise ImportError_(f"{path}: {unsupported_link(link)}", file=path)
            for n, (ts, buf) in enumerate(records, start=1):
                stats["packets"] = stats.get("packets", 0) + 1
                ip = _ip_layer(link, bytes(buf))
                p = parse_ip(float(ts), ip) if ip is not None else None
                if p is None:
                    stats["skipped"] = stats.get("skipped", 0) + 1
                    continue
                yield p
    except ImportError_:
        raise
    except (ValueError, struct.error, EOFError, OSError, zlib.error, *dpkt_errors) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImportError_(f"{path}: packet {n + 1}: cannot read the capture ({why})", file=path, row=n + 1) from None


def tls_sni(data: bytes) -> Optional[str]:
    """The server_name of a TLS ClientHello starting at ``data`` (one or more records), or None."""
    try:
        if len(data) < 9 or data[0] != 0x16 or data[5] != 0x01:
            return None
        p = 9 + 2 + 32                                    # record + handshake headers, version, random
        p += 1 + data[p]                                  # session id
        p += 2 + struct.unpack_from("!H", data, p)[0]     # cipher suites
        p += 1 + data[p]                                  # compression methods
        end = p + 2 + struct.unpack_from("!H", data, p)[0]
        p += 2
        while p + 4 <= min(end, len(data)):
            etype, elen = struct.unpack_from("!HH", data, p)
            if etype == 0 and elen >= 5:
                nlen = struct.unpack_from("!H", data, p + 7)[0]
                name = data[p + 9:p + 9 + nlen]
                return name.decode("ascii", "replace") if len(name) == nlen else None
            p += 4 + elen
    except (IndexError, struct.error):
        return None
    return None


QUIC_CLIENT_PACKETS = 8  # client datagrams of a UDP flow searched for QUIC Initial packets


@dataclass
class Flow:
    """One bidirectional flow: all-packet sums for the statistics, the first ``keep`` packets."""

    proto: int
    client: Endpoint
    server: Endpoint
    first_ts: float
    last_ts: float
    sizes: List[int] = field(default_factory=list)
    dirs: List[int] = field(default_factory=list)
    iat_ms: List[float] = field(default_factory=list)
    n: int = 0
    n_up: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    size_sq: int = 0
    closing: bool = False
    client_payload: bytes = b""
    sni: Optional[str] = None
    quic: Optional[InitialAssembler] = None
    capture: str = ""  # the file it was read from (set by import pcap)

    def add(self, p: Packet, keep: int) -> None:
        up = p.src == self.client
        if len(self.sizes) < keep:
            self.sizes.append(p.size)
            self.dirs.append(1 if up else -1)
            self.iat_ms.append(0.0 if self.n == 0 else max(0.0, (p.ts - self.last_ts) * 1000.0))
        self.n += 1
        self.n_up += up
        self.bytes_up += p.size if up else 0
        self.bytes_down += 0 if up else p.size
        self.size_sq += p.size * p.size
        self.last_ts = max(self.last_ts, p.ts)
        self.closing |= bool(p.tcp_flags & 0x05)                         # FIN or RST
        if up and p.proto == 6 and p.payload and self.sni is None and len(self.client_payload) < 16384:
            self.client_payload += p.payload
            self.sni = tls_sni(self.client_payload)
        elif up and p.proto == 17 and p.payload and self.sni is None and self.n_up <= QUIC_CLIENT_PACKETS:
            if self.quic is None:
                self.quic = InitialAssembler(tls_sni)
            if not self.quic.done:
                self.sni = self.quic.feed(p.payload)

    @property
    def span_ms(self) -> float:
        return (self.last_ts - self.first_ts) * 1000.0


def assemble_flows(packets: Iterator[Packet], keep: int, idle_timeout: float = 120.0) -> List[Flow]:
    """Flows in order of their first packet (see the module doc for the rules)."""
    live: Dict[tuple, Flow] = {}
    done: List[Flow] = []
    for p in packets:
        key = (p.proto,) + ((p.src, p.dst) if p.src <= p.dst else (p.dst, p.src))
        f = live.get(key)
        syn_only = p.proto == 6 and p.tcp_flags & 0x12 == 0x02
        if f is not None and (p.ts - f.last_ts > idle_timeout or (f.closing and syn_only)):
            done.append(live.pop(key))
            f = None
        if f is None:
            f = live[key] = Flow(p.proto, p.src, p.dst, p.ts, p.ts)
        f.add(p, keep)
    done.extend(live.values())
    done.sort(key=lambda fl: fl.first_ts)
    return done
