"""QUIC Initial decryption and SNI: the worked example of RFC 9001 Appendix A (keys, plaintext,
server name) and the version 2 keys of RFC 9369 Appendix A, tampering, other packet kinds, a ClientHello split over two packets in shuffled and
overlapping CRYPTO frames, and a capture through the flow assembler and ``import pcap``."""
import os
import struct

import pytest

pytest.importorskip("cryptography")
dpkt = pytest.importorskip("dpkt")

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from tests.importers.test_pcap import C4, S4, _udp, write  # noqa: E402
from xclass.importers.pcap import labelled_flows  # noqa: E402
from xclass.importers.pcap_read import assemble_flows, read_packets, tls_sni  # noqa: E402
from xclass.importers.quic_initial import (V2, InitialAssembler, chlo_sni, client_keys,  # noqa: E402
                                           crypto_frames, open_initial)

DCID = bytes.fromhex("8394c8f03e515708")


def rfc_packet() -> bytes:
    path = os.path.join(os.path.dirname(__file__), "..", "assets", "rfc9001_client_initial.hex")
    lines = [ln for ln in open(path) if not ln.startswith("#")]
    return bytes.fromhex("".join("".join(lines).split()))


def test_rfc9001_keys_plaintext_and_name():
    key, iv, hp = client_keys(1, DCID)
    # RFC 9001 A.1
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    # RFC 9369 (QUIC version 2) A.1, same connection id
    assert [x.hex() for x in client_keys(V2, DCID)] == [
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"]
    pkt = rfc_packet()
    plain, n, _ = open_initial(pkt)
    assert n == len(pkt) == 1200
    # A.2: one CRYPTO frame (offset 0, 241 bytes: the ClientHello), then PADDING
    assert plain[:16].hex() == "060040f1010000ed0303ebf8fa56f129"
    frames = crypto_frames(plain)
    assert list(frames) == [0] and len(frames[0]) == 241 and set(plain[4 + 241:]) == {0}
    assert InitialAssembler(tls_sni).feed(pkt) == "example.com"


def test_tampered_other_versions_and_short_headers_give_no_name():
    pkt = bytearray(rfc_packet())
    pkt[100] ^= 1                                              # the AEAD tag no longer verifies
    assert open_initial(bytes(pkt))[0] is None and InitialAssembler(tls_sni).feed(bytes(pkt)) is None
    unknown = bytearray(rfc_packet())
    unknown[1:5] = b"\x0a\x0a\x0a\x0a"                         # a greased / unknown version
    assert open_initial(bytes(unknown)) == (None, 0, None)
    assert open_initial(b"\x40" + bytes(40))[1] == 0           # short header
    assert InitialAssembler(tls_sni).feed(b"q" * 30) is None   # DNS-like payload
    assert client_keys(0x51303530, DCID) is None                # gQUIC Q050: not read


def _varint(v: int) -> bytes:
    return bytes([v]) if v < 64 else struct.pack("!H", 0x4000 | v)


def seal(frames: bytes, pn: int, version: int = 1, dcid: bytes = DCID, keys_dcid: bytes = DCID) -> bytes:
    """A client Initial built the RFC 9001 way (header protection after AEAD), padded to 1200 B.
    ``keys_dcid``: the connection id the keys come from (the first Initial's)."""
    key, iv, hp = client_keys(version, keys_dcid)
    first = 0xC0 | ((1 if version == V2 else 0) << 4) | 0x01  # 2-byte packet number
    pn_bytes = struct.pack("!H", pn)
    body_len = 1200 - 7 - len(dcid) - 1 - 1 - 2 - 2
    payload = frames + bytes(body_len - 16 - len(frames))     # PADDING
    header = (bytes([first]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid + b"\x00" + b"\x00"
              + struct.pack("!H", 0x4000 | (len(pn_bytes) + len(payload) + 16)) + pn_bytes)
    nonce = bytes(a ^ b for a, b in zip(iv, pn.to_bytes(12, "big")))
    ct = AESGCM(key).encrypt(nonce, payload, header)
    pn_off = len(header) - 2
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(ct[2:18]) + enc.finalize()              # sample starts 4 bytes after pn_off
    out = bytearray(header + ct)
    out[0] ^= mask[0] & 0x0F
    for i in range(2):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def crypto(off: int, data: bytes) -> bytes:
    return b"\x06" + _varint(off) + _varint(len(data)) + data


def test_gquic_clear_chlo_sni():
    # CHLO, 3 tags (PAD, SNI, VER) with cumulative end offsets, then the values
    vals = [b"-" * 7, b"www.example.net", b"Q046"]
    ends, e = [], 0
    for v in vals:
        e += len(v)
        ends.append(e)
    chlo = b"CHLO" + struct.pack("<HH", 3, 0) + b"".join(
        t + struct.pack("<I", end) for t, end in zip([b"PAD\x00", b"SNI\x00", b"VER\x00"], ends)) + b"".join(vals)
    datagram = bytes.fromhex("c3513034365008") + bytes(20) + chlo
    assert chlo_sni(datagram) == "www.example.net" and chlo_sni(datagram[:-12]) is None
    assert chlo_sni(chlo.replace(b"SNI\x00", b"XYZ\x00")) is None
    assert InitialAssembler(tls_sni).feed(datagram) == "www.example.net"


@pytest.mark.parametrize("version", [1, V2, 0xFF00001D, 0xFF000016, 0xFACEB002])
def test_split_shuffled_overlapping_client_hello(version):
    hello = crypto_frames(open_initial(rfc_packet())[0])[0]   # the RFC's ClientHello
    a, b = 50, 140
    # packet 1: the middle and the tail (reversed), packet 2: the head overlapping the middle;
    # packet 2 goes to the server's connection id but keeps the first packet's keys
    p1 = seal(b"\x01" + crypto(b, hello[b:]) + crypto(a, hello[a:b]), 0, version)
    p2 = seal(b"\x00\x00" + crypto(0, hello[:a + 10]), 1, version, dcid=b"\x11" * 5)
    asm = InitialAssembler(tls_sni)
    assert asm.feed(p1) is None and not asm.done
    zero_rtt = bytes([0xD0 if version != V2 else 0xE0]) + bytes(30)  # a coalesced non-Initial
    assert asm.feed(p2 + zero_rtt) == "example.com"


def test_capture_flow_and_label_sni(tmp_path):
    pkt = rfc_packet()
    frames = [(10.0, _udp(C4, S4, 51000, 443, pkt)), (10.02, _udp(S4, C4, 443, 51000, b"\xc0" + bytes(200))),
              (10.05, _udp(C4, S4, 51000, 443, b"\x40" + bytes(60))),
              (10.10, _udp(C4, S4, 40000, 53, b"q" * 30))]                # DNS-like: no name
    path = write(tmp_path / "q.pcap", frames)
    flows = assemble_flows(read_packets(path, {}), keep=4)
    assert [f.sni for f in flows] == ["example.com", None] and flows[0].n == 3
    labelled, counts = labelled_flows([path], sni=True)
    assert [name for name, _ in labelled] == ["example.com"] and counts["unlabelled_flows"] == 1
