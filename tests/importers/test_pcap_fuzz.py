"""Hostile captures: seeded byte mutations (flips, cuts, insertions, 0xff runs) of valid pcap and
pcapng files, and of the payloads the name readers parse (a TLS ClientHello, a decrypted QUIC
Initial, a QUIC Initial re-encrypted around damaged CRYPTO frames, which anyone can build since
Initial keys come from the packet itself). Reading never fails with anything but the one-line
ImportError_ naming the file; the payload readers return a name or None and never raise."""
import random
import struct

import pytest

dpkt = pytest.importorskip("dpkt")
pytest.importorskip("cryptography")

from tests.importers.test_pcap import C4, S4, _udp, capture, client_hello, write  # noqa: E402
from tests.importers.test_quic_initial import crypto, rfc_packet, seal  # noqa: E402
from xclass.importers import ImportError_  # noqa: E402
from xclass.importers.pcap import labelled_flows  # noqa: E402
from xclass.importers.pcap_read import tls_sni  # noqa: E402
from xclass.importers.quic_initial import InitialAssembler, chlo_sni, crypto_frames, open_initial  # noqa: E402


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    if not b:
        return b""
    kind = rng.choice(["flip", "cut", "insert", "ff"])
    if kind == "flip":
        for _ in range(rng.randint(1, 12)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "cut":
        del b[rng.randrange(len(b)):]
    elif kind == "insert":
        j = rng.randrange(len(b) + 1)
        b[j:j] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    else:
        j = rng.randrange(len(b))
        b[j:j + 8] = b"\xff" * len(b[j:j + 8])
    return bytes(b)


@pytest.mark.parametrize("ng", [False, True])
def test_damaged_captures_end_in_one_line_naming_the_file(tmp_path, ng):
    frames = capture() + [(100.2, _udp(C4, S4, 51000, 443, rfc_packet()))]   # + a QUIC Initial
    good = open(write(tmp_path / "good.cap", frames, ng), "rb").read()
    rng, outcomes = random.Random(7), {"read": 0, "error": 0}
    for i in range(150):
        path = tmp_path / f"m{i}.cap"
        path.write_bytes(mutate(good, rng))
        try:
            labelled_flows([str(path)], sni=True)
            outcomes["read"] += 1
        except ImportError_ as exc:
            assert str(exc).startswith(str(path) + ":") and "\n" not in str(exc), str(exc)
            outcomes["error"] += 1
    assert outcomes["read"] > 10 and outcomes["error"] > 10     # both kinds of damage were met


def gquic_chlo(name: bytes) -> bytes:
    """A clear gQUIC datagram: header, then a CHLO with the tags PAD, SNI, VER."""
    vals, ends = [b"-" * 7, name, b"Q046"], []
    for v in vals:
        ends.append(sum(map(len, vals[:len(ends) + 1])))
    tags = b"".join(t + struct.pack("<I", e) for t, e in zip([b"PAD\x00", b"SNI\x00", b"VER\x00"], ends))
    return bytes.fromhex("c3513034365008") + bytes(20) + b"CHLO" + struct.pack("<HH", 3, 0) + tags + b"".join(vals)


def test_name_readers_never_raise_on_damaged_payloads():
    rng = random.Random(11)
    plain = open_initial(rfc_packet())[0]
    hello = plain[4:4 + 241]                                  # the ClientHello inside the CRYPTO frame
    record = b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello   # as the QUIC reader passes it on
    cases = [(tls_sni, client_hello("www.example.org"), "www.example.org"), (tls_sni, record, "example.com"),
             (chlo_sni, gquic_chlo(b"www.example.net"), "www.example.net")]
    for f, data, name in cases:
        assert f(data) == name                                # undamaged, the name is read
        for _ in range(1500):
            out = f(mutate(data, rng))
            assert out is None or isinstance(out, str)
    for _ in range(1500):
        assert isinstance(crypto_frames(mutate(plain[:300], rng)), dict)
    for pn in range(100):                                      # valid encryption, damaged frames
        out = InitialAssembler(tls_sni).feed(seal(mutate(crypto(0, hello), rng), pn=pn))
        assert out is None or isinstance(out, str)
