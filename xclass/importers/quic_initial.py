"""The server name (SNI) of a QUIC connection, read from the client's Initial packets.

QUIC encrypts even its first packets, but with keys that any observer can derive: the client
chooses a destination connection id (DCID) and both sides compute

    initial_secret = HKDF-Extract(salt of the version, DCID)
    client_secret  = HKDF-Expand-Label(initial_secret, "client in", 32)
    key, iv, hp    = HKDF-Expand-Label(client_secret, "quic key" / "quic iv" / "quic hp")

(RFC 9001 section 5; version 2, RFC 9369, uses its own salt and "quicv2 ..." labels). A packet is
opened in two steps: the header protection mask (AES-ECB of 16 ciphertext bytes under ``hp``)
reveals the packet-number length and value, then AES-128-GCM with nonce ``iv XOR packet
number`` and the header as associated data decrypts the payload. Its CRYPTO frames carry the TLS
ClientHello without the TLS record layer, possibly split over several frames and packets in any
order (browsers shuffle them on purpose), so :class:`InitialAssembler` collects the fragments by
stream offset until the ClientHello is complete. The keys stay those of the first DCID for the
whole Initial exchange, even after the client switches to the server's connection id.

Supported versions: 1, 2, the IETF drafts 22-34 and Facebook's mvfst versions. Older Google
QUIC (Q039-Q046) sends its client hello (``CHLO``) in clear: its ``SNI`` tag is read directly
(:func:`chlo_sni`); Google's encrypted Q050/T050/T051 are not read. Anything else (a greased version, a damaged or tampered packet, a server
packet) gives no name, never an error: SNI is optional metadata.
Needs the ``cryptography`` package (the ``pcap`` extra); without it no QUIC name is read.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Dict, Optional, Tuple

_V1_SALT = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_V2_SALT = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_DRAFT29_SALT = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_DRAFT23_SALT = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
_DRAFT22_SALT = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
_FACEBOOK = {0xFACEB001: _DRAFT22_SALT, 0xFACEB002: _DRAFT23_SALT, 0xFACEB00E: _DRAFT23_SALT}
V2 = 0x6B3343CF
_MAX_CRYPTO = 1 << 16          # a ClientHello larger than this is not waited for


def version_params(version: int) -> Optional[Tuple[bytes, str, int]]:
    """(salt, label prefix, long-header type bits of an Initial) of a QUIC version, or None."""
    if version == 1:
        return _V1_SALT, "quic", 0
    if version == V2:
        return _V2_SALT, "quicv2", 1
    if 0xFF00001D <= version <= 0xFF000022:
        return _DRAFT29_SALT, "quic", 0
    if 0xFF000017 <= version <= 0xFF00001C:
        return _DRAFT23_SALT, "quic", 0
    if version == 0xFF000016:
        return _DRAFT22_SALT, "quic", 0
    salt = _FACEBOOK.get(version)
    return (salt, "quic", 0) if salt is not None else None


def _expand_label(secret: bytes, label: str, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (SHA-256)."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + block, i + 1
    return out[:length]


def client_keys(version: int, dcid: bytes) -> Optional[Tuple[bytes, bytes, bytes]]:
    """(key 16 B, iv 12 B, hp 16 B) protecting the client's Initial packets, or None."""
    params = version_params(version)
    if params is None:
        return None
    salt, prefix, _ = params
    initial = hmac.new(salt, dcid, hashlib.sha256).digest()       # HKDF-Extract
    client = _expand_label(initial, "client in", 32)
    return (_expand_label(client, f"{prefix} key", 16), _expand_label(client, f"{prefix} iv", 12),
            _expand_label(client, f"{prefix} hp", 16))


def _varint(data: bytes, p: int) -> Tuple[int, int]:
    """(value, next offset) of a QUIC variable-length integer at ``data[p]``."""
    n = 1 << (data[p] >> 6)
    if p + n > len(data):
        raise IndexError("truncated varint")
    v = data[p] & 0x3F
    for b in data[p + 1:p + n]:
        v = (v << 8) | b
    return v, p + n


def _aead():
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # the pcap extra is not installed: no QUIC names
        return None
    return Cipher, algorithms, modes, AESGCM


def open_initial(data: bytes, keys: Optional[Tuple[bytes, bytes, bytes]] = None
                 ) -> Tuple[Optional[bytes], int, Optional[Tuple[bytes, bytes, bytes]]]:
    """Decrypt the client Initial packet at the start of a UDP payload.

    Returns (plaintext frames or None, length of this packet in ``data`` (0 when it is not a
    long-header packet), the keys used). ``keys``: those of an earlier Initial of the same
    connection; by default they are derived from this packet's DCID."""
    crypto = _aead()
    if crypto is None or len(data) < 7 or not data[0] & 0x80:
        return None, 0, keys
    version = int.from_bytes(data[1:5], "big")
    params = version_params(version)
    p = 6 + data[5]
    if params is None or p >= len(data):
        return None, 0, keys
    dcid = data[6:p]
    p += 1 + data[p]                                             # source connection id
    try:
        if (data[0] >> 4) & 3 != params[2]:                      # 0-RTT / Handshake: skip it whole
            length, q = _varint(data, p)
            return None, q + length, keys
        token_len, p = _varint(data, p)
        length, pn_off = _varint(data, p + token_len)
    except IndexError:
        return None, 0, keys
    end = pn_off + length
    if end > len(data) or length < 20:
        return None, 0, keys
    keys = keys or client_keys(version, dcid)
    key, iv, hp = keys
    Cipher, algorithms, modes, AESGCM = crypto
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(data[pn_off + 4:pn_off + 20]) + enc.finalize()
    first = data[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(data[pn_off:pn_off + pn_len], mask[1:1 + pn_len]))
    header = bytes([first]) + data[1:pn_off] + pn_bytes
    nonce = bytes(a ^ b for a, b in zip(iv, int.from_bytes(pn_bytes, "big").to_bytes(12, "big")))
    try:
        plain = AESGCM(key).decrypt(nonce, data[pn_off + pn_len:end], header)
    except Exception:  # noqa: BLE001 - InvalidTag: not a client Initial under these keys
        return None, end, keys
    return plain, end, keys


def crypto_frames(plain: bytes) -> Dict[int, bytes]:
    """{stream offset: data} of the CRYPTO frames in an Initial's plaintext (PADDING, PING, ACK
    and CONNECTION_CLOSE frames are skipped; parsing stops at any other frame type)."""
    out: Dict[int, bytes] = {}
    p = 0
    try:
        while p < len(plain):
            ftype, p = _varint(plain, p)
            if ftype in (0x00, 0x01):
                continue
            if ftype in (0x02, 0x03):                            # ACK [+ ECN counts]
                _, p = _varint(plain, p)
                _, p = _varint(plain, p)
                count, p = _varint(plain, p)
                for _ in range(1 + 2 * count + (3 if ftype == 0x03 else 0)):
                    _, p = _varint(plain, p)
            elif ftype == 0x06:
                off, p = _varint(plain, p)
                n, p = _varint(plain, p)
                out[off] = plain[p:p + n]
                p += n
            elif ftype in (0x1C, 0x1D):
                _, p = _varint(plain, p)
                if ftype == 0x1C:
                    _, p = _varint(plain, p)
                n, p = _varint(plain, p)
                p += n
            else:
                break
    except IndexError:
        pass
    return out


def chlo_sni(data: bytes) -> Optional[str]:
    """The ``SNI`` tag of a gQUIC client hello (``CHLO``: tag count, then (tag, end offset) pairs,
    then the values), found anywhere in ``data``; None when absent or cut short."""
    i = data.find(b"CHLO")
    if i < 0 or i + 8 > len(data):
        return None
    n = int.from_bytes(data[i + 4:i + 6], "little")
    values = i + 8 + 8 * n
    start = 0
    for t in range(n):
        tag = data[i + 8 + 8 * t:i + 12 + 8 * t]
        end = int.from_bytes(data[i + 12 + 8 * t:i + 16 + 8 * t], "little")
        if tag == b"SNI\x00":
            name = data[values + start:values + end]
            ok = 0 < len(name) == end - start and values + end <= len(data)
            return name.decode("ascii", "replace") if ok else None
        start = end
    return None


class InitialAssembler:
    """Feeds a connection's client UDP payloads; ``sni`` is set once the ClientHello is whole."""

    def __init__(self, tls_sni) -> None:
        self._tls_sni = tls_sni
        self.keys: Optional[Tuple[bytes, bytes, bytes]] = None
        self.stream = bytearray()      # the CRYPTO stream so far, by offset
        self.have = bytearray()        # 1 where ``stream`` holds received bytes
        self.sni: Optional[str] = None
        self.done = False

    def feed(self, payload: bytes) -> Optional[str]:
        """One client datagram (coalesced packets allowed); returns the name once known."""
        if b"CHLO" in payload[:64]:                             # gQUIC <= Q046: a clear CHLO
            self.sni, self.done = chlo_sni(payload), True
            return self.sni
        p = 0
        while not self.done and p < len(payload):
            plain, n, keys = open_initial(payload[p:], self.keys)
            if n <= 0:
                break
            p += n
            if plain is None:
                continue
            self.keys = keys
            for off, chunk in crypto_frames(plain).items():
                self._put(off, chunk)
            self._try()
        return self.sni

    def _put(self, off: int, chunk: bytes) -> None:
        """Write a fragment at its offset (retransmissions may overlap with other boundaries)."""
        end = off + len(chunk)
        if end > _MAX_CRYPTO:
            return
        if end > len(self.stream):
            self.stream.extend(bytes(end - len(self.stream)))
            self.have.extend(bytes(end - len(self.have)))
        self.stream[off:end] = chunk
        self.have[off:end] = b"\x01" * len(chunk)

    def _try(self) -> None:
        gap = self.have.find(0)
        buf = bytes(self.stream[:len(self.have) if gap < 0 else gap])
        if len(buf) < 4:
            return
        need = 4 + int.from_bytes(buf[1:4], "big")
        if buf[0] != 0x01 or need > _MAX_CRYPTO:                 # not a ClientHello: give up
            self.done = True
        elif len(buf) >= need:
            hello = buf[:need]
            self.sni = self._tls_sni(b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello)
            self.done = True
