"""message_delivery over the relay channel against a real helper on loopback.

The helper's relay is configured with platform rules (the ground truth): it drops, refuses
or masks messages carrying them. Sender and receiver talk real HTTP to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.helper import RelayConfig
from probes.channels.base import ChannelError
from probes.channels.relay import RelayChannel
from probes.nettests.base import ProbeContext
from probes.nettests.message_delivery import MessageDelivery
from tests import missing
from tests.loopback.keyword_censor import run_helper

HOST = "127.0.0.6"
RULES = (("falun",), ("tiananmen", "1989"))
DEADLINE = 1.0  # a dropped message costs this long; the controls arrive at once


@pytest.fixture(scope="module", params=["drop", "reject", "modify"])
def relay(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    config = RelayConfig(rules=RULES, action=request.param, token="t0ken")
    with run_helper(HOST, relay=config) as (base, _):
        yield base, request.param


def measure(base: str, keyword: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    ctx = ProbeContext(helpers=[base], options={"delivery_deadline": DEADLINE})
    env = env if env is not None else {"CENSORSCOPE_RELAY_TOKEN": "t0ken"}

    async def go() -> dict[str, Any]:
        nettest = MessageDelivery(ctx)
        nettest.channel = RelayChannel.from_settings([base], None, env)
        from probes.nettests.message_delivery import Postman

        nettest.postman = Postman(nettest.channel, DEADLINE, 0.05)
        try:
            return await nettest.measure(keyword)
        finally:
            await nettest.close()

    return asyncio.run(go())


EXPECTED = {"drop": "dropped", "reject": "rejected", "modify": "modified"}


@pytest.mark.parametrize("keyword", ["falun", "tiananmen+1989"])
def test_filtered_keyword_is_not_delivered(relay: tuple[str, str], keyword: str) -> None:
    base, action = relay
    keys = measure(base, keyword)
    assert keys["control_before"]["outcome"] == keys["control_after"]["outcome"] == "delivered"
    assert keys["outcome"] == EXPECTED[action]
    assert keys["blocking"] == "delivery"
    assert keys["blocking_detail"] == f"delivery.{EXPECTED[action]}"
    if action == "reject":
        assert keys["message"]["refusal"] == "message content denied"


def test_single_part_of_a_combination_is_delivered(relay: tuple[str, str]) -> None:
    base, _ = relay
    keys = measure(base, "tiananmen")
    assert keys["outcome"] == "delivered" and keys["blocking"] is False
    assert keys["message"]["received_text"] == keys["message"]["text"]


def test_broken_channel_is_inconclusive_and_token_never_stored(relay: tuple[str, str]) -> None:
    base, _ = relay
    keys = measure(base, "falun", env={"CENSORSCOPE_RELAY_TOKEN": "Xq9-bad-secret"})
    assert keys["blocking"] is None
    assert keys["control_before"]["outcome"] == "rejected"  # 401 to every message
    assert "Xq9-bad-secret" not in json.dumps(keys) and "t0ken" not in json.dumps(keys)


def test_shared_mailbox_needs_its_key_and_the_key_is_never_stored(relay: tuple[str, str]) -> None:
    """Two vantages share a mailbox by name and key; a third with the name alone reads nothing."""
    base, _ = relay
    shared = {
        "CENSORSCOPE_RELAY_TOKEN": "t0ken",
        "CENSORSCOPE_RELAY_MAILBOX": "shared-box",
        "CENSORSCOPE_RELAY_MAILBOX_KEY": "Kq7-mailbox-key-0123",
    }
    with pytest.raises(ChannelError, match="CENSORSCOPE_RELAY_MAILBOX_KEY"):
        RelayChannel.from_settings([base], None, {**shared, "CENSORSCOPE_RELAY_MAILBOX_KEY": ""})

    async def go() -> tuple[list[str], list[str], dict[str, Any]]:
        sender = RelayChannel.from_settings([base], None, shared)
        receiver = RelayChannel.from_settings([base], None, shared)
        stranger = RelayChannel.from_settings(
            [base], None, {**shared, "CENSORSCOPE_RELAY_MAILBOX_KEY": "another-key-456789"}
        )
        try:
            await sender.send("hello over a shared box")
            got = [m.text for m in await receiver.fetch()]
            seen = [m.text for m in await stranger.fetch()]
            return got, seen, sender.describe()
        finally:
            for channel in (sender, receiver, stranger):
                await channel.close()

    got, seen, described = asyncio.run(go())
    assert got == ["hello over a shared box"] and seen == []
    assert "Kq7-mailbox-key" not in json.dumps(described)
    keys = measure(base, "hello", env=shared)
    assert "Kq7-mailbox-key" not in json.dumps(keys)


def test_cli_run_message_delivery(tmp_path: Path) -> None:
    keywords = tmp_path / "kw.csv"
    keywords.write_text(
        "keyword,language,category,source\nhello,en,control,t\nfalun,en,religion,t\n"
        "tiananmen+1989,en,politics,t\n",
        encoding="utf-8",
    )
    results = tmp_path / "results"
    env = {**os.environ, "CENSORSCOPE_RELAY_TOKEN": "t0ken"}
    config = RelayConfig(rules=RULES, action="drop", token="t0ken")
    with run_helper("127.0.0.13", relay=config) as (base, _):
        proc = subprocess.run(
            [sys.executable, "-c", "from probes.cli import main; main()", "run",
             "message_delivery", "--channel", "relay", "--keywords", str(keywords),
             "--helper", base, "--results", str(results), "--delivery-deadline", str(DEADLINE)],
            capture_output=True, text=True, timeout=60, env=env,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stored = [json.loads(x) for p in results.rglob("*.jsonl") for x in p.read_text().splitlines()]
    by_input = {m["input"]: m["test_keys"] for m in stored}
    assert by_input["hello"]["blocking"] is False
    assert by_input["falun"]["blocking_detail"] == "delivery.dropped"
    assert by_input["tiananmen+1989"]["blocking_detail"] == "delivery.dropped"
    assert "t0ken" not in "".join(p.read_text() for p in results.rglob("*.jsonl"))


# --- smtp: a real SMTP server (aiosmtpd) delivering into a Maildir read by a real Dovecot ------

MAIL_HOST = "127.0.0.10"
REFUSE = ("falun",)  # answered "550 Mail content denied", as QQ Mail does
SWALLOW = ("tiananmen", "1989")  # accepted, never delivered
MAIL_UID = 65534  # Dovecot will not serve mail as root


class FilteringMailHandler:
    """aiosmtpd handler: refuses or swallows messages by content, delivers the rest."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        import email.policy
        import mailbox

        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = message.get_content() if not message.is_multipart() else ""
        if all(p in text for p in REFUSE):
            return "550 Mail content denied"
        if all(p in text for p in SWALLOW):
            return "250 OK"
        mailbox.Maildir(str(self.maildir), create=True).add(envelope.content)
        for root, dirs, files in os.walk(self.maildir):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), MAIL_UID, MAIL_UID)
        os.chown(self.maildir, MAIL_UID, MAIL_UID)
        return "250 OK"


DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/home/%u/Maildir
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
"""


@pytest.fixture(scope="module")
def mail_servers() -> Iterator[dict[str, str]]:
    import shutil
    import socket
    import tempfile
    import time

    if os.geteuid() != 0:
        pytest.skip("Dovecot needs root")
    if shutil.which("dovecot") is None:
        missing.skip("Dovecot (apt-get install dovecot-imapd)")
    from aiosmtpd.controller import Controller

    from tests.loopback.web import closed_port

    root = Path(tempfile.mkdtemp(prefix="cs-mail-"))
    root.chmod(0o755)
    (root / "home" / "bob").mkdir(parents=True)
    os.chown(root / "home" / "bob", MAIL_UID, MAIL_UID)
    (root / "passwd").write_text("bob:{PLAIN}imap-pass-Z7\n")
    imap_port = closed_port(MAIL_HOST)
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, host=MAIL_HOST, port=imap_port, uid=MAIL_UID))
    dovecot = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    smtp_port = closed_port(MAIL_HOST)
    controller = Controller(
        FilteringMailHandler(root / "home" / "bob" / "Maildir"), hostname=MAIL_HOST, port=smtp_port
    )
    controller.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((MAIL_HOST, imap_port), timeout=1).close()
                break
            except OSError:
                assert dovecot.poll() is None, dovecot.stderr.read() if dovecot.stderr else ""
                assert time.monotonic() < deadline, "dovecot did not start"
                time.sleep(0.05)
        yield {
            "CENSORSCOPE_SMTP_HOST": MAIL_HOST,
            "CENSORSCOPE_SMTP_PORT": str(smtp_port),
            "CENSORSCOPE_SMTP_FROM": "alice@censorscope.test",
            "CENSORSCOPE_SMTP_TO": "bob@censorscope.test",
            "CENSORSCOPE_IMAP_HOST": MAIL_HOST,
            "CENSORSCOPE_IMAP_PORT": str(imap_port),
            "CENSORSCOPE_IMAP_USER": "bob",
            "CENSORSCOPE_IMAP_PASSWORD": "imap-pass-Z7",
            # This lab's servers speak no TLS: say so, or the channel refuses to log in.
            "CENSORSCOPE_SMTP_STARTTLS": "0",
            "CENSORSCOPE_IMAP_TLS": "0",
            "CENSORSCOPE_MAIL_PLAINTEXT_LOGIN": "1",
        }
    finally:
        controller.stop()
        dovecot.terminate()
        dovecot.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def measure_smtp(env: dict[str, str], keyword: str) -> dict[str, Any]:
    from probes.channels.smtp import SMTPChannel
    from probes.nettests.message_delivery import Postman

    ctx = ProbeContext(options={"channel": "smtp", "delivery_deadline": DEADLINE})

    async def go() -> dict[str, Any]:
        nettest = MessageDelivery(ctx)
        nettest.channel = SMTPChannel.from_settings([], None, env)
        nettest.postman = Postman(nettest.channel, DEADLINE, 0.05)
        try:
            return await nettest.measure(keyword)
        finally:
            await nettest.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("keyword", "outcome", "detail"),
    [
        ("hello", "delivered", None),
        ("法轮 falun", "rejected", "delivery.rejected"),
        ("tiananmen+1989", "dropped", "delivery.dropped"),
        ("1989", "delivered", None),
    ],
)
def test_smtp_channel(
    mail_servers: dict[str, str], keyword: str, outcome: str, detail: str | None
) -> None:
    keys = measure_smtp(mail_servers, keyword)
    assert keys["control_before"]["outcome"] == keys["control_after"]["outcome"] == "delivered"
    assert keys["outcome"] == outcome
    assert keys["blocking_detail"] == detail
    if outcome == "rejected":
        assert keys["message"]["status_code"] == 550
        assert keys["message"]["refusal"] == "Mail content denied"
    if outcome == "delivered":
        assert keys["message"]["received_text"] == keys["message"]["text"]
    assert "imap-pass-Z7" not in json.dumps(keys)


def test_smtp_settings_come_from_the_environment_only() -> None:
    from probes.channels.base import ChannelError
    from probes.channels.smtp import SMTPChannel

    with pytest.raises(ChannelError, match="CENSORSCOPE_SMTP_HOST"):
        SMTPChannel.from_settings([], None, {})


LAB_MAIL = {
    "CENSORSCOPE_SMTP_HOST": "127.0.0.11",
    "CENSORSCOPE_SMTP_FROM": "alice@censorscope.test",
    "CENSORSCOPE_SMTP_TO": "bob@censorscope.test",
    "CENSORSCOPE_IMAP_HOST": "127.0.0.11",
    "CENSORSCOPE_IMAP_USER": "bob",
    "CENSORSCOPE_IMAP_PASSWORD": "imap-pass-Z7",
}


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"CENSORSCOPE_IMAP_TLS": "0"}, "IMAP password in clear"),
        (
            {"CENSORSCOPE_SMTP_STARTTLS": "0", "CENSORSCOPE_SMTP_USER": "alice",
             "CENSORSCOPE_SMTP_PASSWORD": "smtp-pass"},
            "SMTP password in clear",
        ),
    ],
)  # fmt: skip
def test_smtp_refuses_to_log_in_without_tls_unless_told_it_is_a_lab(
    extra: dict[str, str], names: str
) -> None:
    from probes.channels.base import ChannelError
    from probes.channels.smtp import SMTPChannel

    with pytest.raises(ChannelError, match=names):
        SMTPChannel.from_settings([], None, {**LAB_MAIL, **extra})
    lab = SMTPChannel.from_settings(
        [], None, {**LAB_MAIL, **extra, "CENSORSCOPE_MAIL_PLAINTEXT_LOGIN": "1"}
    )
    assert lab.settings.plaintext_login


@pytest.mark.parametrize("name", ["CENSORSCOPE_SMTP_STARTTLS", "CENSORSCOPE_MAIL_PLAINTEXT_LOGIN"])
def test_smtp_on_off_settings_refuse_a_word_that_is_neither(name: str) -> None:
    """A typo ("ture", "enabled") is named, never read as off (STARTTLS off sends in clear)."""
    from probes.channels.base import ChannelError
    from probes.channels.smtp import SMTPChannel

    with pytest.raises(ChannelError, match=name):
        SMTPChannel.from_settings([], None, {**LAB_MAIL, name: "ture"})
    channel = SMTPChannel.from_settings([], None, {**LAB_MAIL, name: " Yes "})
    assert channel.settings.starttls and (
        channel.settings.plaintext_login == (name == "CENSORSCOPE_MAIL_PLAINTEXT_LOGIN")
    )


def test_smtp_tls_is_on_and_verified_by_default() -> None:
    from probes.channels.smtp import SMTPChannel

    channel = SMTPChannel.from_settings([], "/some/ca.pem", LAB_MAIL)
    s = channel.settings
    assert (s.starttls, s.imap_tls, s.imap_port, s.ca_file) == (True, "tls", 993, "/some/ca.pem")
    assert not s.plaintext_login


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def test_smtp_starttls_verifies_the_server_certificate(test_ca: Any) -> None:
    """A real STARTTLS server (aiosmtpd): trusted CA -> sent; unknown CA -> no message, failure."""
    from aiosmtpd.controller import Controller

    from probes.channels.smtp import SMTPChannel
    from tests.loopback.web import closed_port

    host = "127.0.0.11"
    port = closed_port(host)
    recorder = _Recorder()
    controller = Controller(
        recorder,
        hostname=host,
        port=port,
        tls_context=test_ca.server_context([host]),
        require_starttls=True,
    )
    controller.start()
    try:
        env = {**LAB_MAIL, "CENSORSCOPE_SMTP_PORT": str(port)}
        trusted = SMTPChannel.from_settings([], test_ca.ca_pem_path, env)
        receipt = trusted._send_sync("hello over TLS")
        assert receipt.accepted, receipt
        assert len(recorder.messages) == 1
        untrusted = SMTPChannel.from_settings([], None, env)  # the system's CAs only
        receipt = untrusted._send_sync("must not be sent")
        assert not receipt.accepted
        assert receipt.failure == "ssl_unknown_authority", receipt
        assert len(recorder.messages) == 1
    finally:
        controller.stop()


def test_the_default_budget_holds_the_delivery_deadline(tmp_path: Path) -> None:
    """Without --timeout the per-input budget follows the method: a probe timeout (here 1 s,
    30 s by default) shorter than the delivery deadline (here 2 s, 60 s by default) would cut
    a dropped message off undecided (issue 15 item 4)."""
    from probes.nettests.http_keyword import HTTPKeyword

    assert MessageDelivery.default_budget({}) > 60
    assert MessageDelivery.default_budget({"delivery_deadline": 2}) > 2
    assert HTTPKeyword.default_budget({}) > 90  # the GFW's residual window fits
    config = tmp_path / "probe.toml"
    config.write_text(f'[probe]\ntimeout = 1.0\nresults = "{tmp_path / "results"}"\n')
    env = {**os.environ, "CENSORSCOPE_RELAY_TOKEN": "t0ken"}
    relay = RelayConfig(rules=RULES, action="drop", token="t0ken")
    with run_helper("127.0.0.16", relay=relay) as (base, _):
        proc = subprocess.run(
            [sys.executable, "-c", "from probes.cli import main; main()", "run",
             "message_delivery", "--config", str(config), "--channel", "relay", "--input",
             "falun", "--helper", base, "--delivery-deadline", "2"],
            capture_output=True, text=True, timeout=60, env=env,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = [
        x for p in (tmp_path / "results").rglob("*.jsonl") for x in p.read_text().splitlines()
    ]
    keys = json.loads(line)["test_keys"]
    assert keys["blocking_detail"] == "delivery.dropped", keys
