"""The `smtp` channel: e-mail sent through an SMTP server and read back over IMAP.

A mail platform that filters content refuses the message to the sender (e.g. QQ Mail's
"550 Mail content denied", Citizen Lab's qqmail list) or files it silently where the receiver
never sees it. Both sides use the standard library (smtplib, imaplib) in a worker thread.
Settings come from the environment only (never the command line, never a measurement):

    CENSORSCOPE_SMTP_HOST, CENSORSCOPE_SMTP_PORT (25), CENSORSCOPE_SMTP_STARTTLS (1; 0 = none),
    CENSORSCOPE_SMTP_USER, CENSORSCOPE_SMTP_PASSWORD (optional login),
    CENSORSCOPE_SMTP_FROM, CENSORSCOPE_SMTP_TO,
    CENSORSCOPE_IMAP_HOST, CENSORSCOPE_IMAP_PORT (993, or 143 unless CENSORSCOPE_IMAP_TLS=1),
    CENSORSCOPE_IMAP_TLS (1 = implicit TLS, the default; starttls; 0 = none),
    CENSORSCOPE_IMAP_USER, CENSORSCOPE_IMAP_PASSWORD, CENSORSCOPE_IMAP_MAILBOX (INBOX),
    CENSORSCOPE_MAIL_CA_FILE (extra trust anchors; default: the run's --ca-file, else the
    system's), CENSORSCOPE_MAIL_PLAINTEXT_LOGIN (0; 1 = a lab may log in without TLS).

TLS is verified (probes.net.tls.verifying_context: chain and host name). Credentials never cross the
network in clear: a login over a session without TLS is refused before any connection is made,
unless CENSORSCOPE_MAIL_PLAINTEXT_LOGIN=1 says this is a lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
import os
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from probes.channels.base import Channel, ChannelError, Received, SendReceipt
from probes.config import FALSE_WORDS, TRUE_WORDS, parse_flag
from probes.net.failures import failure_from_exception
from probes.net.tls import verifying_context

# Per SMTP/IMAP session; a mail server slower than this is itself a finding.
SESSION_TIMEOUT = 15.0
SUBJECT = "censorscope message"


@dataclass(frozen=True)
class MailSettings:
    smtp_host: str
    smtp_port: int
    mail_from: str
    mail_to: str
    imap_host: str
    imap_port: int
    imap_user: str
    imap_password: str
    smtp_user: str | None = None
    smtp_password: str | None = None
    starttls: bool = True
    imap_tls: str = "tls"  # "tls" (implicit, IMAPS), "starttls" or "none"
    mailbox: str = "INBOX"
    ca_file: str | None = None
    plaintext_login: bool = False  # a lab only: log in without TLS


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """An on/off setting; a word that is neither is an error, never a quiet "off"."""
    value = env.get(f"CENSORSCOPE_{name}")
    if value is None or not value.strip():
        return default
    flag = parse_flag(value)
    if flag is None:
        raise ChannelError(f"smtp: CENSORSCOPE_{name}={value!r}: use 1 or 0 (true/false)")
    return flag


_IMAP_TLS = {**dict.fromkeys(TRUE_WORDS, "tls"), **dict.fromkeys(FALSE_WORDS, "none"),
             "tls": "tls", "starttls": "starttls", "none": "none"}  # fmt: skip


def _settings(env: Mapping[str, str], ca_file: str | None = None) -> MailSettings:
    def need(name: str) -> str:
        value = env.get(f"CENSORSCOPE_{name}")
        if not value:
            raise ChannelError(f"smtp: set CENSORSCOPE_{name} (environment or config)")
        return value

    raw_tls = (env.get("CENSORSCOPE_IMAP_TLS") or "1").strip().lower()
    if raw_tls not in _IMAP_TLS:
        raise ChannelError(f"smtp: CENSORSCOPE_IMAP_TLS={raw_tls!r}: use 1, starttls or 0")
    imap_tls = _IMAP_TLS[raw_tls]
    try:
        settings = MailSettings(
            smtp_host=need("SMTP_HOST"),
            smtp_port=int(env.get("CENSORSCOPE_SMTP_PORT") or 25),
            mail_from=need("SMTP_FROM"),
            mail_to=need("SMTP_TO"),
            imap_host=need("IMAP_HOST"),
            imap_port=int(env.get("CENSORSCOPE_IMAP_PORT") or (993 if imap_tls == "tls" else 143)),
            imap_user=need("IMAP_USER"),
            imap_password=need("IMAP_PASSWORD"),
            smtp_user=env.get("CENSORSCOPE_SMTP_USER") or None,
            smtp_password=env.get("CENSORSCOPE_SMTP_PASSWORD") or None,
            starttls=_flag(env, "SMTP_STARTTLS", default=True),
            imap_tls=imap_tls,
            mailbox=env.get("CENSORSCOPE_IMAP_MAILBOX") or "INBOX",
            ca_file=env.get("CENSORSCOPE_MAIL_CA_FILE") or ca_file,
            plaintext_login=_flag(env, "MAIL_PLAINTEXT_LOGIN"),
        )
    except ValueError as exc:
        raise ChannelError(f"smtp: a port is not a number: {exc}") from exc
    if not settings.plaintext_login:
        if settings.imap_tls == "none":
            raise ChannelError(
                "smtp: CENSORSCOPE_IMAP_TLS=0 would send the IMAP password in clear; use TLS, "
                "or set CENSORSCOPE_MAIL_PLAINTEXT_LOGIN=1 in a lab"
            )
        if settings.smtp_user and not settings.starttls:
            raise ChannelError(
                "smtp: CENSORSCOPE_SMTP_STARTTLS=0 would send the SMTP password in clear; use "
                "STARTTLS, or set CENSORSCOPE_MAIL_PLAINTEXT_LOGIN=1 in a lab"
            )
    return settings


def body_text(raw: bytes) -> str:
    """The plain-text body of a received message, as the sender wrote it."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(preferencelist=("plain",)) if message.is_multipart() else message
    if part is None:
        return ""
    content = part.get_content() if isinstance(part, EmailMessage) else part.get_payload()
    return str(content).rstrip("\r\n")


class SMTPChannel(Channel):
    name = "smtp"

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings
        self._last_uid = 0
        self._baseline_taken = False
        self._tls: ssl.SSLContext | None = None

    @classmethod
    def from_settings(
        cls, helpers: list[str], ca_file: str | None, env: Mapping[str, str] = os.environ
    ) -> SMTPChannel:
        return cls(_settings(env, ca_file))

    def _context(self) -> ssl.SSLContext:
        """Verified TLS: the system's trust store (plus the CA file), host names checked."""
        if self._tls is None:
            self._tls = verifying_context(self.settings.ca_file)
        return self._tls

    def _send_sync(self, text: str) -> SendReceipt:
        s = self.settings
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = s.mail_from, s.mail_to, SUBJECT
        message.set_content(text)
        started = time.monotonic()
        receipt = SendReceipt(accepted=False)
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SESSION_TIMEOUT) as smtp:
                if s.starttls:
                    smtp.starttls(context=self._context())
                if s.smtp_user and s.smtp_password:
                    smtp.login(s.smtp_user, s.smtp_password)
                smtp.send_message(message)
            receipt.accepted = True
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            receipt.status_code, receipt.refusal = code, reply.decode("utf-8", "replace")
        except smtplib.SMTPResponseException as exc:
            receipt.status_code = exc.smtp_code
            error = exc.smtp_error
            receipt.refusal = (
                error.decode("utf-8", "replace") if isinstance(error, bytes) else error
            )
        except (OSError, smtplib.SMTPException) as exc:
            receipt.failure = failure_from_exception(exc)
        receipt.t = round(time.monotonic() - started, 6)
        return receipt

    def _imap(self) -> imaplib.IMAP4:
        s = self.settings
        client: imaplib.IMAP4
        if s.imap_tls == "tls":
            client = imaplib.IMAP4_SSL(
                s.imap_host, s.imap_port, ssl_context=self._context(), timeout=SESSION_TIMEOUT
            )
        else:
            client = imaplib.IMAP4(s.imap_host, s.imap_port, timeout=SESSION_TIMEOUT)
            if s.imap_tls == "starttls":
                client.starttls(ssl_context=self._context())
        client.login(s.imap_user, s.imap_password)
        status, _ = client.select(s.mailbox, readonly=True)
        if status != "OK":
            raise ChannelError(f"smtp: cannot open mailbox {s.mailbox!r}")
        return client

    def _fetch_sync(self) -> list[Received]:
        try:
            client = self._imap()
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ChannelError(f"smtp receiver: {failure_from_exception(exc)}") from exc
        out: list[Received] = []
        try:
            _status, data = client.uid("SEARCH", f"UID {self._last_uid + 1}:*")
            uids = [int(u) for u in (data[0] or b"").split() if int(u) > self._last_uid]
            if not self._baseline_taken:  # mail already in the box predates this run
                self._baseline_taken = True
                self._last_uid = max(uids, default=self._last_uid)
                return []
            for uid in sorted(uids):
                _status, parts = client.uid("FETCH", str(uid), "(RFC822)")
                raw = next((p[1] for p in parts if isinstance(p, tuple)), b"")
                out.append(Received(str(uid), body_text(raw)))
                self._last_uid = uid
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ChannelError(f"smtp receiver: {failure_from_exception(exc)}") from exc
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                client.logout()
        return out

    async def start(self) -> None:
        """Note what the mailbox already holds, so that old mail is never taken as new."""
        await asyncio.to_thread(self._fetch_sync)

    async def send(self, text: str) -> SendReceipt:
        if not self._baseline_taken:
            try:
                await self.start()
            except ChannelError:
                # Receiver down now: old mail will be read too, which nonces make harmless.
                self._baseline_taken = True
        return await asyncio.to_thread(self._send_sync, text)

    async def fetch(self) -> list[Received]:
        return await asyncio.to_thread(self._fetch_sync)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "name": self.name,
            "smtp": f"{s.smtp_host}:{s.smtp_port}",
            "imap": f"{s.imap_host}:{s.imap_port}",
            "mailbox": s.mailbox,
        }
