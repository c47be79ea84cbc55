"""The `smtp` channel: e-mail sent through an SMTP server and read back over IMAP.

A mail platform that filters content refuses the message to the sender (e.g. QQ Mail's
"550 Mail content denied", Citizen Lab's qqmail list) or files it silently where the receiver
never sees it. Both sides use the standard library (smtplib, imaplib) in a worker thread.
Settings come from the environment only (never the command line, never a measurement):

    CENSORSCOPE_SMTP_HOST, CENSORSCOPE_SMTP_PORT (25), CENSORSCOPE_SMTP_STARTTLS (0/1),
    CENSORSCOPE_SMTP_USER, CENSORSCOPE_SMTP_PASSWORD (optional login),
    CENSORSCOPE_SMTP_FROM, CENSORSCOPE_SMTP_TO,
    CENSORSCOPE_IMAP_HOST, CENSORSCOPE_IMAP_PORT (143, or 993 with CENSORSCOPE_IMAP_TLS=1),
    CENSORSCOPE_IMAP_USER, CENSORSCOPE_IMAP_PASSWORD, CENSORSCOPE_IMAP_MAILBOX (INBOX)
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
import os
import smtplib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from probes.channels.base import Channel, ChannelError, Received, SendReceipt
from probes.net.failures import failure_from_exception

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
    starttls: bool = False
    imap_tls: bool = False
    mailbox: str = "INBOX"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _settings(env: Mapping[str, str]) -> MailSettings:
    def need(name: str) -> str:
        value = env.get(f"CENSORSCOPE_{name}")
        if not value:
            raise ChannelError(f"smtp: set CENSORSCOPE_{name} (environment or config)")
        return value

    imap_tls = _flag(env.get("CENSORSCOPE_IMAP_TLS"))
    try:
        return MailSettings(
            smtp_host=need("SMTP_HOST"),
            smtp_port=int(env.get("CENSORSCOPE_SMTP_PORT") or 25),
            mail_from=need("SMTP_FROM"),
            mail_to=need("SMTP_TO"),
            imap_host=need("IMAP_HOST"),
            imap_port=int(env.get("CENSORSCOPE_IMAP_PORT") or (993 if imap_tls else 143)),
            imap_user=need("IMAP_USER"),
            imap_password=need("IMAP_PASSWORD"),
            smtp_user=env.get("CENSORSCOPE_SMTP_USER") or None,
            smtp_password=env.get("CENSORSCOPE_SMTP_PASSWORD") or None,
            starttls=_flag(env.get("CENSORSCOPE_SMTP_STARTTLS")),
            imap_tls=imap_tls,
            mailbox=env.get("CENSORSCOPE_IMAP_MAILBOX") or "INBOX",
        )
    except ValueError as exc:
        raise ChannelError(f"smtp: a port is not a number: {exc}") from exc


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

    @classmethod
    def from_settings(
        cls, helpers: list[str], ca_file: str | None, env: Mapping[str, str] = os.environ
    ) -> SMTPChannel:
        return cls(_settings(env))

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
                    smtp.starttls()
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
        cls = imaplib.IMAP4_SSL if s.imap_tls else imaplib.IMAP4
        client = cls(s.imap_host, s.imap_port, timeout=SESSION_TIMEOUT)
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
