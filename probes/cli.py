"""The `censorscope` command: one typer app, every subcommand of DESIGN 2.

Exit status (a contract): 0 success, 2 bad usage or bad input (the message names the file,
line or field), 3 the control helper was unreachable (every input still measured and stored,
verdicts null), 130 interrupted (Ctrl-C; what finished is stored), 1 any other failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from probes.cli_options import ConfigOption, ResultsOption
from probes.config import Config, ConfigError, load_config
from probes.exit_status import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from probes.exit_status import EXIT_FAILURE as EXIT_FAILURE  # commands import it from here

app = typer.Typer(
    name="censorscope",
    help="Measure Internet censorship with evidence: run nettests, serve controls, analyse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lists_app = typer.Typer(help="Test lists and keyword lists.", no_args_is_help=True)
app.add_typer(lists_app, name="lists")


def _nettest_help() -> str:
    from probes.nettests import REGISTRY

    return "The nettest: " + ", ".join(sorted(REGISTRY)) + "."


_NETTEST_HELP = _nettest_help()


def fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one clear line to stderr and exit with the contract's status."""
    typer.echo(f"censorscope: {message}", err=True)
    raise typer.Exit(status)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("censorscope")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from probes import __version__ as number
        typer.echo(f"censorscope {number}")
        raise typer.Exit(0)


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Measure Internet censorship with evidence: run nettests, serve controls, analyse."""


def _config(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def run(
    nettest: Annotated[str, typer.Argument(help=_NETTEST_HELP)],
    input_: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="An input (repeatable) (default: none)."),
    ] = None,
    testlist: Annotated[
        list[Path] | None,
        typer.Option(
            "--testlist", "-l", help="A Citizen Lab CSV test list (repeatable) (default: none)."
        ),
    ] = None,
    keywords: Annotated[
        Path | None, typer.Option(help="A keyword list (keyword nettests) (default: none).")
    ] = None,
    vantage: Annotated[
        str | None,
        typer.Option(
            help="Vantage name (annotations.vantage, results path) (default: config "
            "vantage.name, else 'default')."
        ),
    ] = None,
    results: ResultsOption = None,
    config: ConfigOption = None,
    helper: Annotated[
        list[str] | None,
        typer.Option(
            help="Control helper URL (repeatable: fallbacks) (default: config probe.helpers, "
            "else OONI's public helpers)."
        ),
    ] = None,
    resolver: Annotated[
        str | None,
        typer.Option(
            help="DNS over UDP to IP[:PORT] instead of the system resolver (default: config "
            "probe.resolver, else the system resolver)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=4096,
            help="Measurements in flight at once (default: config probe.concurrency, else 16).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Per-input time budget, seconds (default: config probe.timeout, else 30; "
            "censor_trace: computed from its pacing).",
        ),
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, max=1000, help="Measure each input N times.")] = 1,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue an interrupted report: its REPORT_ID, in the same --results "
            "(default: none, a new report)."
        ),
    ] = None,
    fingerprints: Annotated[
        list[Path] | None,
        typer.Option(
            help="Blocking fingerprints (OONI CSV format; repeatable) (default: config "
            "probe.fingerprints, else none)."
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            help="Extra CA bundle trusted for TLS (labs, tests) (default: config probe.ca_file, "
            "else none)."
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Force the progress bar on/off (default: on when stdout is a terminal).",
        ),
    ] = None,
    dns_resolver: Annotated[
        list[str] | None,
        typer.Option(
            help="dns_consistency: a resolver, repeatable: system, IP[:PORT], udp://, tcp://, "
            "tls:// (DoT), https://... (DoH) (default: the system resolver)."
        ),
    ] = None,
    control_resolver: Annotated[
        str | None,
        typer.Option(help="dns_consistency: a trusted resolver (same forms) (default: none)."),
    ] = None,
    dns_probe_address: Annotated[
        list[str] | None,
        typer.Option(
            help="dns_consistency: IP[:PORT] running no DNS server; answers are forged "
            "(default: none)."
        ),
    ] = None,
    bogon_exempt: Annotated[
        list[str] | None,
        typer.Option(
            help="CIDR holding real servers (a lab's private 'internet'); repeatable "
            "(default: none)."
        ),
    ] = None,
    sni_endpoint: Annotated[
        str | None,
        typer.Option(
            help="sni_blocking, ech_check, quic_sni: IP:PORT to handshake with (default: DNS)."
        ),
    ] = None,
    outer_sni: Annotated[
        list[str] | None,
        typer.Option(
            help="ech_check: an outer SNI tried besides the name and the ECHConfig's "
            "public_name (repeatable; '' for none) (default: cloudflare-ech.com)."
        ),
    ] = None,
    control_sni: Annotated[
        str | None,
        typer.Option(
            help="sni_blocking, dnscheck, quic_sni: the control SNI (default: example.com)."
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="dnscheck: the name each resolver is asked for (default: example.org)."),
    ] = None,
    default_addr: Annotated[
        list[str] | None,
        typer.Option(
            help="dnscheck: an address of the resolver measured besides the bootstrap's "
            "(repeatable; OONI's default_addrs) (default: none)."
        ),
    ] = None,
    endpoints: Annotated[
        Path | None,
        typer.Option(
            help="whatsapp, telegram, signal, facebook_messenger: the endpoint list (TOML; "
            "docs/data-format.md) (default: the bundled testlists/apps.toml)."
        ),
    ] = None,
    listen_window: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="DNS: seconds to keep listening after the first answer (default: 0.5).",
        ),
    ] = None,
    placement: Annotated[
        list[str] | None,
        typer.Option(
            help="http_keyword: path, query, host, body, sni (repeatable) (default: all)."
        ),
    ] = None,
    encoding: Annotated[
        list[str] | None,
        typer.Option(
            help="http_keyword: utf-8, gb18030, big5: the encodings a word's URL and body bytes "
            "are sent in, each that can carry the word (repeatable) (default: all three)."
        ),
    ] = None,
    residual_window: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="http_keyword, quic_sni: seconds a triggered endpoint stays tainted "
            "(default: 90; quic_sni 180).",
        ),
    ] = None,
    keyword_tries: Annotated[
        int | None,
        typer.Option(min=1, max=20, help="http_keyword: tries of a failing keyword (default: 5)."),
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option(
            help="message_delivery: channel adapter (relay, smtp, matrix) (default: relay)."
        ),
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option(
            help="message_delivery: the account that sends ([accounts.NAME] in the config; "
            "with --receiver) (default: one anonymous mailbox for both ends)."
        ),
    ] = None,
    receiver: Annotated[
        str | None,
        typer.Option(
            help="message_delivery: the account that receives ([accounts.NAME]; with "
            "--sender) (default: one anonymous mailbox for both ends)."
        ),
    ] = None,
    delivery_deadline: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="message_delivery: seconds to wait for a message (default: 60)."
        ),
    ] = None,
    packet_capture: Annotated[
        bool | None,
        typer.Option(
            "--packet-capture/--no-packet-capture",
            help="Record each flow's packets for RST/injection evidence (needs CAP_NET_RAW). "
            "Default: on for tcp_connect, sni_blocking, dns_consistency; off for "
            "web_connectivity (it costs ~6 ms of CPU per input).",
        ),
    ] = None,
    http3: Annotated[
        bool | None,
        typer.Option(
            "--http3/--no-http3",
            help="web_connectivity: fetch the page again over HTTP/3 when the site advertises "
            "h3 (Alt-Svc) (default: off).",
        ),
    ] = None,
    pcap: Annotated[
        Path | None,
        typer.Option(
            help="Keep one pcap per measurement here (CAP_NET_RAW; implies capture) "
            "(default: none)."
        ),
    ] = None,
    keyword: Annotated[
        str | None,
        typer.Option(help="censor_trace: the one word that triggers the censor (default: none)."),
    ] = None,
    trace_max_ttl: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="censor_trace: highest TTL tried (default: 30)."),
    ] = None,
    trace_step_pause: Annotated[
        float | None,
        typer.Option(min=0.0, help="censor_trace: seconds between TTL steps (default: 1)."),
    ] = None,
    trace_run_pause: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="censor_trace: seconds between runs to one endpoint (default: 100)."
        ),
    ] = None,
    trace_runs: Annotated[
        int | None, typer.Option(min=1, max=20, help="censor_trace: runs per input (default: 3).")
    ] = None,
) -> None:
    """Run a nettest over inputs and store OONI-format measurements."""
    from probes.run_command import RunRequest, execute_run

    cfg = _config(config)
    request = RunRequest(
        nettest=nettest,
        inputs=list(input_ or []),
        testlists=list(testlist or []),
        keywords=keywords,
        vantage=vantage,
        results=results,
        helpers=list(helper or []),
        resolver=resolver,
        concurrency=concurrency,
        timeout=timeout,
        repeat=repeat,
        resume=resume,
        fingerprints=list(fingerprints or []),
        ca_file=ca_file,
        progress=progress,
        nettest_options={
            key: value
            for key, value in {
                "dns_resolvers": dns_resolver,
                "control_resolver": control_resolver,
                "dns_probe_addresses": dns_probe_address,
                "listen_window": listen_window,
                "bogon_exempt": bogon_exempt,
                "placements": placement,
                "encodings": encoding,
                "residual_window": residual_window,
                "keyword_tries": keyword_tries,
                "channel": channel,
                "sender": sender,
                "receiver": receiver,
                "delivery_deadline": delivery_deadline,
                "sni_endpoint": sni_endpoint,
                "control_sni": control_sni,
                "outer_sni": " ".join(outer_sni) if outer_sni is not None else None,
                "domain": domain,
                "default_addrs": " ".join(default_addr) if default_addr else None,
                "endpoints": str(endpoints) if endpoints else None,
                "packet_capture": packet_capture,
                "pcap_dir": str(pcap) if pcap else None,
                "http3": http3,
                "trace_keyword": keyword,
                "trace_max_ttl": trace_max_ttl,
                "trace_step_pause": trace_step_pause,
                "trace_run_pause": trace_run_pause,
                "trace_runs": trace_runs,
            }.items()
            if value is not None
        },
    )
    status = execute_run(cfg, request, fail=fail)
    raise typer.Exit(status)


def _zone_problem(zone: str, answer: str) -> str | None:
    """A --dns-zone that is no DNS name, or an A record that is no IPv4 address: named now,
    not as a traceback when the zone server starts or answers."""
    import ipaddress

    import dns.exception
    import dns.name

    try:
        dns.name.from_text(zone)
    except dns.exception.DNSException as exc:
        return f"--dns-zone {zone!r}: not a DNS name ({exc})"
    try:
        ipaddress.IPv4Address(answer)
    except ValueError:
        return f"--dns-answer {answer!r}: give the IPv4 address every name in the zone has"
    return None


@app.command()
def helper(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:8080",
    resolver: Annotated[
        str | None,
        typer.Option(help="Resolve through this DNS server IP[:PORT] (default: the system's)."),
    ] = None,
    allow_private: Annotated[
        bool, typer.Option(help="Allow connections to private/loopback addresses (labs only).")
    ] = False,
    ca_file: Annotated[
        Path | None, typer.Option(help="Extra CA bundle trusted for TLS (default: none).")
    ] = None,
    echo_ports: Annotated[
        list[str] | None,
        typer.Option(
            help="http_keyword: a TCP/HTTP echo port or range LOW-HIGH (repeatable; hundreds "
            "let a residual window taint one port, not the test) (default: none)."
        ),
    ] = None,
    tls_echo_ports: Annotated[
        list[str] | None,
        typer.Option(
            help="http_keyword: a TLS echo port or range LOW-HIGH, any SNI (repeatable) "
            "(default: none)."
        ),
    ] = None,
    dns_zone: Annotated[
        str | None,
        typer.Option(
            help="http_keyword: serve this DNS zone (every name: --dns-answer) (default: none)."
        ),
    ] = None,
    dns_listen: Annotated[
        str, typer.Option(help="IP:PORT of the zone's DNS server (UDP).")
    ] = "127.0.0.1:5353",
    dns_answer: Annotated[
        str | None,
        typer.Option(help="The A record of every name in --dns-zone (default: the --listen host)."),
    ] = None,
    relay: Annotated[
        bool | None,
        typer.Option(
            "--relay/--no-relay",
            help="Serve message mailboxes (message_delivery's relay channel); every caller "
            "must show the bearer token CENSORSCOPE_RELAY_TOKEN, and --relay without it is an "
            "error (default: on when CENSORSCOPE_RELAY_TOKEN is set, off otherwise).",
        ),
    ] = None,
    client_rate: Annotated[
        float,
        typer.Option(
            help="Requests per second per client address (IPv6: per /64), after a burst of "
            "100; more get 429. 0 = no limit (the lab and the benchmarks, one client).",
        ),
    ] = 20.0,
    geoip_db: Annotated[
        list[Path] | None,
        typer.Option(
            help="MaxMind DB file (repeatable) whose ASNs fill ip_info's `asn`, as oohelperd "
            "does (default: none, every asn is 0).",
        ),
    ] = None,
) -> None:
    """Serve the control test helper (OONI web-connectivity protocol), echo ports and relay."""
    import os

    from backend.helper import (
        DNSZoneConfig,
        EchoConfig,
        HelperConfig,
        RelayConfig,
        ServerLimits,
        parse_listen,
        serve,
    )
    from probes.geoip import GeoDatabase, GeoIPError

    try:
        host, _port = parse_listen(listen)
        ServerLimits(client_rate=client_rate)
    except ValueError as exc:
        fail(str(exc))
    echo = None
    if echo_ports or tls_echo_ports:
        from backend.helper_echo import parse_ports

        try:
            tcp = parse_ports(echo_ports or [])
            tls = parse_ports(tls_echo_ports or [])
        except ValueError as exc:
            fail(f"--echo-ports/--tls-echo-ports: {exc}")
        echo = EchoConfig(host, tcp, tls)
    zone = None
    if dns_zone:
        try:
            dns_host, dns_port = parse_listen(dns_listen)
        except ValueError as exc:
            fail(f"--dns-listen: {exc}")
        if problem := _zone_problem(dns_zone, dns_answer or host):
            fail(problem)
        zone = DNSZoneConfig(dns_zone, dns_answer or host, dns_host, dns_port)
    relay_token = os.environ.get("CENSORSCOPE_RELAY_TOKEN") or None
    if relay and relay_token is None:
        fail("--relay needs CENSORSCOPE_RELAY_TOKEN (the relay never runs open)")
    try:  # a blank token is refused by RelayConfig: bad input, not a traceback
        relay_config = (
            RelayConfig(token=relay_token) if relay_token and relay is not False else None
        )
    except ValueError as exc:
        fail(f"CENSORSCOPE_RELAY_TOKEN: {exc}")
    asn_lookup = None
    if geoip_db:
        try:
            database = GeoDatabase(geoip_db)
        except GeoIPError as exc:
            fail(f"--geoip-db: {exc}")
        asn_lookup = lambda ip: database.asn(ip)[0]  # noqa: E731
    serve(
        listen,
        HelperConfig(
            resolver=resolver,
            allow_private=allow_private,
            ca_file=str(ca_file) if ca_file else None,
            asn_lookup=asn_lookup,
        ),
        echo=echo,
        dns_zone=zone,
        relay=relay_config,
        limits=ServerLimits(client_rate=client_rate),
    )


@lists_app.command("validate")
def lists_validate(
    files: Annotated[list[Path], typer.Argument(help="Test lists or keyword lists.")],
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail on warnings too (odd rows a published list keeps as written): "
            "for lists we write ourselves (default: warnings do not fail).",
        ),
    ] = False,
) -> None:
    """Report every bad row as FILE:LINE: FIELD: REASON; exit 2 on an error (or, with --strict,
    a warning)."""
    from probes.testlists import validate_command

    raise typer.Exit(validate_command(files, sys.stdout, strict=strict))


def _mount_lab() -> None:
    """The lab's commands live in the lab package (it imports nothing of ours)."""
    try:
        from lab.cli import app as lab_app
    except ImportError:  # pragma: no cover - the lab package is part of the distribution
        return
    app.add_typer(lab_app, name="lab", help="The censor lab in Linux network namespaces.")


_mount_lab()


def _register_commands() -> None:
    """Add the commands of probes/commands/*.py (each module has `register(app)`)."""
    import importlib
    import pkgutil

    import probes.commands

    for info in sorted(pkgutil.iter_modules(probes.commands.__path__), key=lambda i: i.name):
        try:
            module = importlib.import_module(f"probes.commands.{info.name}")
            register = module.register
        except Exception as exc:
            # One broken optional command (e.g. a missing extra) must not take the probe down;
            # tests/test_cli_commands.py fails on it, so it never ships broken.
            print(f"censorscope: command module {info.name} unavailable: {exc}", file=sys.stderr)
            continue
        register(app)


# Under `python -m probes.cli` this file runs as __main__, a second copy of the module: only the
# real `probes.cli` registers commands (their modules import names from it).
if __name__ != "__main__":
    _register_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("censorscope: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    from probes.cli import main as _real_main

    _real_main()
