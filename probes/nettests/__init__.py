"""The nettests, by name. Modules are imported on demand so the CLI starts fast."""

from __future__ import annotations

import importlib

from probes.nettests.base import Nettest

# name -> "module:Class"
REGISTRY: dict[str, str] = {
    "web_connectivity": "probes.nettests.web_connectivity:WebConnectivity",
    "dns_consistency": "probes.nettests.dns_consistency:DNSConsistency",
    "tcp_connect": "probes.nettests.tcp_connect:TCPConnect",
    "sni_blocking": "probes.nettests.sni_blocking:SNIBlocking",
    "tls_interception": "probes.nettests.tls_interception:TLSInterception",
    "http_keyword": "probes.nettests.http_keyword:HTTPKeyword",
    "message_delivery": "probes.nettests.message_delivery:MessageDelivery",
    "censor_trace": "probes.nettests.censor_trace:CensorTrace",
    "dnscheck": "probes.nettests.dnscheck:DNSCheck",
    "whatsapp": "probes.nettests.apps:WhatsApp",
    "telegram": "probes.nettests.apps:Telegram",
    "signal": "probes.nettests.apps:Signal",
    "facebook_messenger": "probes.nettests.apps:FacebookMessenger",
    "ech_check": "probes.nettests.ech_check:ECHCheck",
    "quic_sni": "probes.nettests.quic_sni:QuicSNI",
    "download": "probes.nettests.download:Download",
}


def nettest_class(name: str) -> type[Nettest]:
    """The class of a nettest; KeyError names the known ones."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown nettest {name!r} (known: {', '.join(sorted(REGISTRY))})") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Nettest] = getattr(importlib.import_module(module_name), class_name)
    return cls
