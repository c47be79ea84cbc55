"""The response head of the lab's web server software, shared by everything that serves pages.

The sites (lab.servers), the censor's block-page server (the same software, lab.servers) and
the censor's forged block page (lab.censor) all answer with this head, as a national filter
whose block pages come from the same server stack as the sites (a CDN in front of everything,
a captive portal): the status and header names then match the real site's, which is exactly
the case where OONI v0.4's header comparison calls a block page "accessible".
"""

from __future__ import annotations

from http import HTTPStatus

SERVER = "cs-lab"
HTML = "text/html; charset=utf-8"


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Blocked"


def response_head(
    status: int, content_type: str, length: int, *, keep_alive: bool, alt_svc: str = ""
) -> bytes:
    """Status line and headers, the blank line included; `alt_svc` advertises HTTP/3."""
    return (
        f"HTTP/1.1 {status} {reason(status)}\r\nServer: {SERVER}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        + (f"Alt-Svc: {alt_svc}\r\n" if alt_svc else "")
        + f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode()
