"""Read the SNI out of a QUIC v1 client Initial, as a censor on the path can.

A QUIC Initial is encrypted, but with keys anyone can derive: RFC 9001 section 5.2 makes them
from a public salt and the Destination Connection ID the client put in the clear. This is how
the Great Firewall reads the SNI of QUIC connections since 2024 (Zohaib et al., "Exposing and
Circumventing SNI-based QUIC Censorship of the Great Firewall of China", USENIX Security
2025). Steps (RFC 9000 section 17.2.2, RFC 9001 sections 5.1-5.4):

1. the long header: type Initial, version 1, DCID, SCID, token, length;
2. initial_secret = HKDF-Extract(salt, DCID); client_in = HKDF-Expand-Label(.., "client in");
   key, iv, hp from it ("quic key", "quic iv", "quic hp");
3. header protection off: AES-ECB(hp, 16-byte sample 4 bytes past the packet number's
   start) masks the first byte's low bits and the packet number;
4. AES-128-GCM open with nonce = iv XOR packet number, the header as associated data;
5. the CRYPTO frames' bytes, put in order from offset 0, hold the TLS ClientHello (no record
   layer in QUIC), whose server_name extension lab.matching reads.

Pure functions on bytes (the censor daemon and the loopback test's relay both use them); the
`cryptography` package does HKDF, AES-ECB and AES-GCM. Only the Initial of QUIC version 1
(RFC 9000) is read; version 2 (RFC 9369) has another salt and packet type numbering.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lab.matching import tls_sni

QUIC_V1 = 0x00000001
# RFC 9001 section 5.2.
INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
# Frame types (RFC 9000 section 19) a client's Initial may carry.
PADDING, PING, ACK, ACK_ECN, CRYPTO, CONNECTION_CLOSE = 0x00, 0x01, 0x02, 0x03, 0x06, 0x1C
MAX_CRYPTO = 64 * 1024  # a ClientHello larger than this is not looked at


class NotInitial(ValueError):
    """The datagram is not a QUIC v1 Initial this module can open."""


@dataclass(frozen=True)
class Initial:
    dcid: bytes
    scid: bytes
    packet_number: int
    frames: bytes  # the decrypted payload
    size: int  # bytes of the datagram this packet took (coalesced packets may follow)


def _hkdf_expand_label(secret: bytes, label: str, length: int) -> bytes:
    """TLS 1.3's HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context, SHA-256."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def client_initial_keys(dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting the client's Initial packets for this DCID."""
    initial_secret = hmac.new(INITIAL_SALT_V1, dcid, hashlib.sha256).digest()
    client = _hkdf_expand_label(initial_secret, "client in", 32)
    return (
        _hkdf_expand_label(client, "quic key", 16),
        _hkdf_expand_label(client, "quic iv", 12),
        _hkdf_expand_label(client, "quic hp", 16),
    )


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 section 16) at pos: (value, next pos)."""
    if pos >= len(data):
        raise NotInitial("truncated varint")
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        raise NotInitial("truncated varint")
    value = first & 0x3F
    for b in data[pos + 1 : pos + size]:
        value = (value << 8) | b
    return value, pos + size


def is_initial(datagram: bytes) -> bool:
    """A long-header packet of type Initial, version 1 (cheap: no decryption)."""
    return (
        len(datagram) >= 7
        and datagram[0] & 0xC0 == 0xC0
        and (datagram[0] >> 4) & 0x03 == 0
        and struct.unpack("!I", datagram[1:5])[0] == QUIC_V1
    )


def open_initial(datagram: bytes) -> Initial:
    """Decrypt the first packet of a datagram, a client Initial; NotInitial when it is not
    one (or does not decrypt: it was not made with the client's Initial keys)."""
    if not is_initial(datagram):
        raise NotInitial("not a QUIC v1 Initial")
    pos = 5
    dcid_len = datagram[pos]
    dcid = datagram[pos + 1 : pos + 1 + dcid_len]
    pos += 1 + dcid_len
    if pos >= len(datagram) or dcid_len > 20:
        raise NotInitial("bad destination connection ID")
    scid_len = datagram[pos]
    scid = datagram[pos + 1 : pos + 1 + scid_len]
    pos += 1 + scid_len
    token_len, pos = read_varint(datagram, pos)
    pos += token_len
    length, pn_offset = read_varint(datagram, pos)
    end = pn_offset + length
    if end > len(datagram) or length < 20:
        raise NotInitial("truncated Initial")
    key, iv, hp = client_initial_keys(dcid)
    sample = datagram[pn_offset + 4 : pn_offset + 20]
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    first = datagram[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(
        b ^ m for b, m in zip(datagram[pn_offset : pn_offset + pn_len], mask[1:], strict=False)
    )
    header = bytes([first]) + datagram[1:pn_offset] + pn_bytes
    packet_number = int.from_bytes(pn_bytes, "big")
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    try:
        frames = AESGCM(key).decrypt(nonce, datagram[pn_offset + pn_len : end], header)
    except InvalidTag as exc:
        raise NotInitial("does not decrypt with the client's Initial keys") from exc
    return Initial(dcid, scid, packet_number, frames, end)


def crypto_fragments(frames: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of each CRYPTO frame in an Initial's payload (RFC 9000 section 19.6);
    stops at a frame type an Initial may not carry."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(frames):
        kind, pos = read_varint(frames, pos)
        if kind in (PADDING, PING):
            continue
        if kind == CRYPTO:
            offset, pos = read_varint(frames, pos)
            size, pos = read_varint(frames, pos)
            out.append((offset, frames[pos : pos + size]))
            pos += size
        elif kind in (ACK, ACK_ECN):
            _largest, pos = read_varint(frames, pos)
            _delay, pos = read_varint(frames, pos)
            ranges, pos = read_varint(frames, pos)
            _first, pos = read_varint(frames, pos)
            for _ in range(2 * ranges + (3 if kind == ACK_ECN else 0)):
                _, pos = read_varint(frames, pos)
        elif kind == CONNECTION_CLOSE:
            _code, pos = read_varint(frames, pos)
            _frame, pos = read_varint(frames, pos)
            reason, pos = read_varint(frames, pos)
            pos += reason
        else:
            break
    return out


def assemble(fragments: list[tuple[int, bytes]]) -> bytes:
    """The contiguous CRYPTO stream from offset 0 that the fragments give."""
    stream = b""
    for offset, data in sorted(fragments):
        if offset > len(stream):
            break
        stream += data[len(stream) - offset :]
        if len(stream) >= MAX_CRYPTO:
            break
    return stream


def client_hello_sni(crypto: bytes) -> str | None:
    """The SNI of the ClientHello at the start of the CRYPTO stream (None: incomplete, not a
    ClientHello, or no SNI). QUIC carries TLS handshake messages without the record layer;
    lab.matching.tls_sni reads records, so one is put around the message."""
    if len(crypto) < 4 or crypto[0] != 0x01:
        return None
    size = 4 + int.from_bytes(crypto[1:4], "big")
    if len(crypto) < size or size > 0xFFFF:
        return None
    return tls_sni(b"\x16\x03\x01" + struct.pack("!H", size) + crypto[:size])


def initial_sni(datagram: bytes) -> str | None:
    """The SNI of a datagram holding a whole ClientHello in its first Initial (None when it
    has none or is not a client Initial)."""
    try:
        return client_hello_sni(assemble(crypto_fragments(open_initial(datagram).frames)))
    except NotInitial:
        return None
