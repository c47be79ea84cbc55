"""A TLS 1.3 ClientHello built byte by byte, with or without an Encrypted Client Hello extension.

Python's ssl module cannot add an extension to its ClientHello, and ech_check needs three
otherwise alike hellos: no ECH, GREASE ECH, and ECH sealed to a server's real ECHConfig. The
censor it looks for judges the first flight only (Russia's TSPU drops ClientHellos that carry
extension 0xfe0d with the outer SNI cloudflare-ech.com), so we send the hello and read the
server's first record: a ServerHello, a HelloRetryRequest or an alert means the hello got
through; a reset, a timeout or a closed connection is what a censor leaves.

Formats: RFC 8446 section 4.1.2 (ClientHello) and 4.2 (extensions); the ECH extension and
ECHConfig are draft-ietf-tls-esni-22 sections 4 and 5, GREASE ECH section 6.2, the inner hello's
encoding and padding section 5.1 and 6.1.3; the sealing is HPKE (RFC 9180) through pyhpke.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ECH_EXTENSION = 0xFE0D  # encrypted_client_hello, and the ECHConfig version
ECH_OUTER_EXTENSIONS = 0xFD00
OUTER, INNER = 0, 1  # ECHClientHelloType
KEM_X25519 = 0x0020  # DHKEM(X25519, HKDF-SHA256), RFC 9180 section 7.1
KDF_HKDF_SHA256 = 0x0001
AEAD_AES128_GCM, AEAD_AES256_GCM, AEAD_CHACHA20 = 0x0001, 0x0002, 0x0003
AEAD_TAG = 16  # every AEAD above
# RFC 8446 section 4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
# TLS 1.3 suites first, then TLS 1.2 ECDHE suites, so that a 1.2-only server answers too.
CIPHER_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8)
GROUPS = (0x001D, 0x0017, 0x0018)  # x25519, secp256r1, secp384r1
SIGNATURE_ALGORITHMS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
DEFAULT_ALPN = ("h2", "http/1.1")
TLS_VERSIONS = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2", 0x0302: "TLSv1.1", 0x0301: "TLSv1.0"}


class HelloError(ValueError):
    """An ECHConfigList or a server record that cannot be parsed (the message says where)."""


def _u8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _u16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!H", kind) + _u16(body)


# --- ECHConfig ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ECHConfig:
    """One ECHConfig of version 0xfe0d (draft-ietf-tls-esni section 4)."""

    raw: bytes  # the whole ECHConfig (version, length, contents): HPKE's info needs it
    config_id: int
    kem_id: int
    public_key: bytes
    cipher_suites: tuple[tuple[int, int], ...]  # (kdf_id, aead_id)
    maximum_name_length: int
    public_name: str


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise HelloError(f"{self.what}: truncated at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def parse_ech_config_list(data: bytes) -> list[ECHConfig]:
    """The ECHConfigs of version 0xfe0d in an ECHConfigList (others are skipped, as clients do).

    Raises HelloError naming the byte where the list is malformed.
    """
    outer = _Reader(data, "ECHConfigList")
    body = outer.vec16()
    if not outer.done:
        raise HelloError(f"ECHConfigList: {len(data) - outer.pos} bytes after the list")
    r = _Reader(body, "ECHConfigList")
    configs: list[ECHConfig] = []
    while not r.done:
        start = r.pos
        version = r.u16()
        contents = r.vec16()
        raw = body[start : r.pos]
        if version != ECH_EXTENSION:
            continue
        c = _Reader(contents, f"ECHConfig at byte {start}")
        config_id, kem_id = c.u8(), c.u16()
        public_key = c.vec16()
        suites_raw = _Reader(c.vec16(), f"ECHConfig at byte {start} cipher_suites")
        suites: list[tuple[int, int]] = []
        while not suites_raw.done:
            suites.append((suites_raw.u16(), suites_raw.u16()))
        max_len = c.u8()
        name = c.vec8().decode("ascii", "replace")
        c.vec16()  # extensions: none is mandatory to understand today
        configs.append(
            ECHConfig(raw, config_id, kem_id, public_key, tuple(suites), max_len, name.lower())
        )
    return configs


def usable_config(configs: list[ECHConfig]) -> tuple[ECHConfig, tuple[int, int]] | None:
    """The first config whose KEM and one of whose cipher suites we can seal with."""
    for config in configs:
        if config.kem_id != KEM_X25519 or len(config.public_key) != 32:
            continue
        for suite in config.cipher_suites:
            if suite[0] == KDF_HKDF_SHA256 and suite[1] in (
                AEAD_AES128_GCM,
                AEAD_AES256_GCM,
                AEAD_CHACHA20,
            ):
                return config, suite
    return None


def grease_config_list(public_name: str) -> bytes:
    """An ECHConfigList with a random config (as OONI's echcheck builds for its GREASE run)."""
    key = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    contents = (
        bytes([secrets.randbelow(256)])
        + struct.pack("!H", KEM_X25519)
        + _u16(key)
        + _u16(struct.pack("!HH", KDF_HKDF_SHA256, AEAD_AES128_GCM))
        + bytes([0])
        + _u8(public_name.encode())
        + _u16(b"")
    )
    return _u16(struct.pack("!H", ECH_EXTENSION) + _u16(contents))


# --- ClientHello -------------------------------------------------------------------------------


@dataclass
class Hello:
    """What was sent: the record bytes and the facts a measurement records about them."""

    record: bytes
    server_name: str  # the SNI in the clear (the outer one with ECH)
    ech: str  # "none", "grease" or "real"
    inner_server_name: str | None = None
    ech_config_id: int | None = None


def _x25519_share() -> bytes:
    key = X25519PrivateKey.generate()
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _extensions(server_name: str, alpn: tuple[str, ...], share: bytes) -> list[bytes]:
    """The extensions of a browser-like TLS 1.3 ClientHello (ECH goes in by the caller)."""
    name = server_name.encode("ascii")
    return [
        _ext(0x0000, _u16(b"\x00" + _u16(name))),  # server_name (host_name)
        _ext(0x0017, b""),  # extended_master_secret
        _ext(0xFF01, b"\x00"),  # renegotiation_info
        _ext(0x000A, _u16(b"".join(struct.pack("!H", g) for g in GROUPS))),  # supported_groups
        _ext(0x000B, _u8(b"\x00")),  # ec_point_formats: uncompressed
        _ext(0x000D, _u16(b"".join(struct.pack("!H", s) for s in SIGNATURE_ALGORITHMS))),
        _ext(0x0010, _u16(b"".join(_u8(p.encode()) for p in alpn))),  # ALPN
        _ext(0x0033, _u16(struct.pack("!H", 0x001D) + _u16(share))),  # key_share: x25519
        _ext(0x002D, _u8(b"\x01")),  # psk_key_exchange_modes: psk_dhe_ke
        _ext(0x002B, _u8(b"\x03\x04\x03\x03")),  # supported_versions: 1.3, 1.2
    ]


def _client_hello_body(session_id: bytes, extensions: list[bytes], random: bytes) -> bytes:
    suites = b"".join(struct.pack("!H", s) for s in CIPHER_SUITES)
    return (
        b"\x03\x03"
        + random
        + _u8(session_id)
        + _u16(suites)
        + _u8(b"\x00")
        + _u16(b"".join(extensions))
    )


def _handshake(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _record(handshake: bytes) -> bytes:
    return b"\x16\x03\x01" + _u16(handshake)


def _ech_outer(suite: tuple[int, int], config_id: int, enc: bytes, payload: bytes) -> bytes:
    return (
        bytes([OUTER]) + struct.pack("!HH", *suite) + bytes([config_id]) + _u16(enc) + _u16(payload)
    )


def grease_payload_length(rng: Callable[[int], int] = secrets.randbelow) -> int:
    """A ciphertext length a real inner hello would have (section 6.1.3 pads the encoded inner
    hello to a multiple of 32; section 6.2 asks GREASE to look like that), plus the AEAD tag."""
    return 32 * (4 + rng(4)) + AEAD_TAG


def client_hello(
    server_name: str,
    *,
    alpn: tuple[str, ...] = DEFAULT_ALPN,
    grease_ech: bool = False,
    ech_config: tuple[ECHConfig, tuple[int, int]] | None = None,
    inner_server_name: str | None = None,
) -> Hello:
    """A ClientHello record for ``server_name`` (the outer SNI when ECH is on).

    ``grease_ech``: an ECH extension with a random config id, a fresh X25519 key as ``enc`` and
    a random payload (section 6.2). ``ech_config``: a real config and suite (usable_config);
    the inner hello names ``inner_server_name`` and is sealed with HPKE to the config's key, with
    the outer hello (payload zeroed) as associated data (section 5.2).
    """
    session_id = os.urandom(32)  # middlebox compatibility mode (RFC 8446 D.4)
    exts = _extensions(server_name, alpn, _x25519_share())
    if grease_ech:
        enc = _x25519_share()
        payload = os.urandom(grease_payload_length())
        ech = _ech_outer((KDF_HKDF_SHA256, AEAD_AES128_GCM), secrets.randbelow(256), enc, payload)
        body = _client_hello_body(session_id, [*exts, _ext(ECH_EXTENSION, ech)], os.urandom(32))
        return Hello(_record(_handshake(body)), server_name, "grease")
    if ech_config is None:
        body = _client_hello_body(session_id, exts, os.urandom(32))
        return Hello(_record(_handshake(body)), server_name, "none")
    config, suite = ech_config
    inner_name = inner_server_name or server_name
    return _sealed_hello(server_name, inner_name, alpn, session_id, exts, config, suite)


def _sealed_hello(
    outer_name: str,
    inner_name: str,
    alpn: tuple[str, ...],
    session_id: bytes,
    outer_exts: list[bytes],
    config: ECHConfig,
    suite: tuple[int, int],
) -> Hello:
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId  # imported when a real config is used

    inner_exts = [
        *_extensions(inner_name, alpn, _x25519_share()),
        _ext(ECH_EXTENSION, bytes([INNER])),
    ]
    # EncodedClientHelloInner: legacy_session_id left empty (the server copies the outer's),
    # padded to a multiple of 32 after the name is padded to maximum_name_length (6.1.3).
    encoded = _client_hello_body(b"", inner_exts, os.urandom(32))
    name_pad = max(0, config.maximum_name_length - len(inner_name))
    padded = len(encoded) + name_pad
    encoded += b"\x00" * (name_pad + 31 - ((padded + 31) % 32))
    hpke = CipherSuite.new(KEMId(config.kem_id), KDFId(suite[0]), AEADId(suite[1]))
    info = b"tls ech\x00" + config.raw
    enc, sender = hpke.create_sender_context(
        hpke.kem.deserialize_public_key(config.public_key), info=info
    )
    payload_len = len(encoded) + AEAD_TAG
    zeroed = _ech_outer(suite, config.config_id, enc, b"\x00" * payload_len)
    random = os.urandom(32)
    aad = _client_hello_body(session_id, [*outer_exts, _ext(ECH_EXTENSION, zeroed)], random)
    payload = sender.seal(encoded, aad=aad)
    ech = _ech_outer(suite, config.config_id, enc, payload)
    body = _client_hello_body(session_id, [*outer_exts, _ext(ECH_EXTENSION, ech)], random)
    return Hello(_record(_handshake(body)), outer_name, "real", inner_name, config.config_id)


# --- the server's answer -----------------------------------------------------------------------


@dataclass
class ServerAnswer:
    """The server's first record, as far as it says whether our hello got through."""

    kind: str  # "server_hello", "hello_retry_request", "alert", "other"
    tls_version: str | None = None
    cipher_suite: int | None = None
    alert: int | None = None  # the alert's description (RFC 8446 section 6)
    echoes_ech: bool = False  # a HelloRetryRequest carrying the ECH extension (ECH accepted)


def record_complete(data: bytes) -> bool:
    """The first TLS record (or, for bytes that are not TLS, a first chunk) is all here."""
    if len(data) < 5:
        return False
    if data[0] not in (0x15, 0x16, 0x14, 0x17):
        return True
    return len(data) >= 5 + struct.unpack("!H", data[3:5])[0]


def parse_server_answer(data: bytes) -> ServerAnswer:
    """What the first record is; raises HelloError on a truncated or malformed ServerHello."""
    content_type = data[0]
    if content_type == 0x15 and len(data) >= 7:
        return ServerAnswer("alert", alert=data[6])
    if content_type != 0x16 or len(data) < 9 or data[5] != 0x02:
        return ServerAnswer("other")
    r = _Reader(data[9 : 5 + struct.unpack("!H", data[3:5])[0]], "ServerHello")
    legacy_version = r.u16()
    random = r.take(32)
    r.vec8()  # legacy_session_id_echo
    suite = r.u16()
    r.u8()  # compression
    version = legacy_version
    echoes = False
    if not r.done:
        exts = _Reader(r.vec16(), "ServerHello extensions")
        while not exts.done:
            kind, body = exts.u16(), exts.vec16()
            if kind == 0x002B and len(body) == 2:
                version = int(struct.unpack("!H", body)[0])
            elif kind == ECH_EXTENSION:
                echoes = True
    answer = "hello_retry_request" if random == HRR_RANDOM else "server_hello"
    return ServerAnswer(answer, TLS_VERSIONS.get(version, f"0x{version:04x}"), suite, None, echoes)
