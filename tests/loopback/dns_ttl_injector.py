"""A DNS server on loopback whose forged answer leaves with another IP TTL, as an injector's does.

For every A query it sends, from its own address and port, first a forged answer (``forged``
addresses) with the socket's IP_TTL set to ``forged_ttl``, then the genuine answer (``genuine``)
with the default TTL (64 on Linux). With ``same_answer`` both carry the genuine addresses: only
the IP TTL tells them apart. Blocking socket on a daemon thread: the test's event loop is free.
"""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rrset

DEFAULT_TTL = 64  # net.ipv4.ip_default_ttl


class TTLInjectingDNS:
    def __init__(
        self,
        host: str = "127.0.0.3",
        *,
        genuine: str = "127.0.7.10",
        forged: str = "10.10.34.35",
        forged_ttl: int = 37,
        same_answer: bool = False,
    ) -> None:
        self.genuine, self.forged, self.forged_ttl = genuine, forged, forged_ttl
        self.same_answer = same_answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ttl-injector", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> TTLInjectingDNS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _answer(self, query: dns.message.Message, address: str) -> bytes:
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
        return reply.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.queries += 1
            forged = self.genuine if self.same_answer else self.forged
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.forged_ttl)
            self.sock.sendto(self._answer(query, forged), peer)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, DEFAULT_TTL)
            self.sock.sendto(self._answer(query, self.genuine), peer)
