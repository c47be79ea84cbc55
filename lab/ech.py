"""The ECH configurations the lab's sites publish in their HTTPS DNS records.

Every https:// site of a scenario answers an HTTPS query (RFC 9460) with ``1 . alpn=h2
ech=...``: an ECHConfigList (draft-ietf-tls-esni section 4) of one config whose X25519 key is
derived from the name (the zone never changes while the lab runs), with the public_name
PUBLIC_NAME, as a CDN's sites share their provider's outer name (Cloudflare's is
cloudflare-ech.com). The lab's TLS servers do not implement ECH: like a server that does not
know the config, they answer the outer ClientHello, which is all ech_check needs.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import dns.name
import dns.rrset
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_NAME = "ech-public.example"
KEM_X25519, KDF_HKDF_SHA256, AEAD_AES128_GCM = 0x0020, 0x0001, 0x0001
ECH_VERSION = 0xFE0D
MAXIMUM_NAME_LENGTH = 64


def config_list(name: str) -> bytes:
    """The ECHConfigList ``name`` publishes."""
    seed = hashlib.sha256(f"lab-ech:{name}".encode()).digest()
    key = X25519PrivateKey.from_private_bytes(seed).public_key()
    public = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    contents = (
        bytes([seed[0]])
        + struct.pack("!HH", KEM_X25519, len(public))
        + public
        + struct.pack("!HHH", 4, KDF_HKDF_SHA256, AEAD_AES128_GCM)
        + bytes([MAXIMUM_NAME_LENGTH, len(PUBLIC_NAME)])
        + PUBLIC_NAME.encode()
        + struct.pack("!H", 0)
    )
    config = struct.pack("!HH", ECH_VERSION, len(contents)) + contents
    return struct.pack("!H", len(config)) + config


def https_rrset(qname: dns.name.Name, name: str, ttl: int = 300) -> dns.rrset.RRset:
    """The HTTPS record of site ``name`` for the question ``qname``."""
    ech = base64.b64encode(config_list(name)).decode("ascii")
    return dns.rrset.from_text(qname, ttl, "IN", "HTTPS", f"1 . alpn=h2 ech={ech}")
