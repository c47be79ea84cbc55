"""Bring the lab up and down: namespaces, veth links, routes, censor rules and processes.

Veth pairs are created directly inside the namespaces, so nothing ever touches the root
namespace's network; the only files outside the state dir are /etc/netns/cs-vp-*/resolv.conf
(so the vantages' system resolver is the lab's). `down` is idempotent and also runs at the
start of `up` and when `up` fails half-way.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lab import addresses as A
from lab import rules
from lab import scenario as scenario_mod
from lab.ca import make_ca

STATE_DIR = Path(os.environ.get("CENSORSCOPE_LAB_STATE", "/run/censorscope-lab"))
NETNS_ETC = Path("/etc/netns")
READY_TIMEOUT_S = 20.0
REPO_ROOT = Path(__file__).resolve().parent.parent
# lab.servers answers HTTP on 80 and 8080 of every address (a wildcard bind), so the helper
# cannot have addresses.HELPER_PORT (8080): uvicorn's bind fails and the echo server answers in
# its place. 8008 is served by nothing else.
HELPER_PORT = A.HELPER_CONTROL_PORT
FINGERPRINTS_FILE = "fingerprints_http.csv"
INTERCEPTOR_CA = "interceptor-ca.pem"  # the same names lab.interceptor reads
INTERCEPTOR_KEY = "interceptor-ca-key.pem"
CN_TRUST = "cn-trust.pem"
# `censorscope collector` of the scheduled demo, on the helper's address: served by nothing
# else there, and exempt from the censor while it runs (start_collector).
COLLECTOR_PORT = 8009


class LabError(RuntimeError):
    """The lab cannot be brought up (missing tool, not root, a command failed)."""


@dataclass(frozen=True)
class Vantage:
    name: str
    namespace: str
    ipv4: str
    ipv6: str
    censored: bool

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]


@dataclass(frozen=True)
class LabInfo:
    """What a test or a person needs to use a running lab."""

    scenario: scenario_mod.Scenario
    scenario_path: str
    state_dir: str
    ca_pem: str
    resolver_v4: str
    resolver_v6: str
    helper_url: str | None
    echo_v4: str
    echo_v6: str
    vantages: dict[str, Vantage] = field(default_factory=dict)
    # The censor's own CA (lab.interceptor signs with it) and the trust store of a censored
    # user who was made to install it: the lab CA plus that CA. Give `cn_trust_pem` to the
    # probe at cn with --ca-file; the helper outside trusts only `ca_pem`.
    interceptor_ca_pem: str = ""
    cn_trust_pem: str = ""
    # The message platform (lab.servers.Platform), for message_delivery's relay channel:
    # CENSORSCOPE_RELAY_URL=platform_url.
    platform_url: str = f"http://{A.PLATFORM_V4}:{A.PLATFORM_PORT}"

    @property
    def resolver(self) -> str:
        return f"{self.resolver_v4}:53"

    @property
    def fingerprints(self) -> str:
        """The censor's block page as an OONI blocking-fingerprints CSV (give it to the probe)."""
        return str(Path(self.state_dir) / FINGERPRINTS_FILE)

    def run(
        self, vantage: str, argv: list[str], *, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a vantage namespace and capture its output."""
        v = self.vantages[vantage]
        return subprocess.run(
            [*v.exec_prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
            env=_python_env(),
        )

    def client(self, vantage: str, *args: str, timeout: float = 30.0) -> dict[str, Any]:
        """Run `python -m lab.client ARGS` inside a vantage and return its JSON result."""
        proc = self.run(vantage, [sys.executable, "-m", "lab.client", *args], timeout=timeout)
        if proc.returncode != 0:
            raise LabError(f"lab.client {' '.join(args)} at {vantage}: {proc.stderr.strip()}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def spare_v4(self, i: int) -> str:
        """A fresh server address (HTTP/HTTPS/echo served, never a scenario domain's)."""
        return A.spare_v4(i)

    def spare_v6(self, i: int) -> str:
        return A.spare_v6(i)

    def censor_stats(self) -> dict[str, Any]:
        path = Path(self.state_dir) / "censor-stats.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data


@dataclass(frozen=True)
class LabStatus:
    up: bool
    namespaces: list[str]
    processes: dict[str, dict[str, Any]]
    censor: dict[str, Any]
    scenario: str | None


# -- running commands -----------------------------------------------------------------------
def _run(argv: list[str], *, input: str | None = None, check: bool = True) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ns(ns: str, *argv: str, input: str | None = None) -> str:
    return _run(["ip", "netns", "exec", ns, *argv], input=input)


def missing_requirements() -> list[str]:
    """Why the lab cannot run here (empty when it can): root, tools, netns, NFQUEUE binding."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root is required (network namespaces and iptables)")
    for tool in ("ip", "iptables", "ip6tables", "iptables-restore", "ethtool"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found (see lab/DEBIAN_PACKAGES.txt)")
    if not Path("/proc/self/ns/net").exists():
        problems.append("kernel without network namespaces")
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        problems.append("Python package netfilterqueue not importable (pip install netfilterqueue)")
    return problems


def _existing_namespaces() -> list[str]:
    try:
        out = _run(["ip", "netns", "list"], check=False)
    except LabError:
        return []
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n in A.NAMESPACES or n.startswith(A.HOP_PREFIX)]


# -- up ---------------------------------------------------------------------------------------
def _link(
    ns_a: str, if_a: str, ns_b: str, if_b: str, v4: tuple[str, str], v6: tuple[str, str]
) -> None:
    _run(
        [
            "ip",
            "link",
            "add",
            "name",
            if_a,
            "netns",
            ns_a,
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            ns_b,
        ]
    )
    for ns, ifname, a4, a6 in ((ns_a, if_a, v4[0], v6[0]), (ns_b, if_b, v4[1], v6[1])):
        _run(["ip", "-n", ns, "addr", "add", a4, "dev", ifname])
        _run(["ip", "-n", ns, "addr", "add", a6, "dev", ifname, "nodad"])
        _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        # Without this, veth leaves checksums to a NIC that does not exist and captures
        # (and the censor's parser) see bad checksums.
        _ns(ns, "ethtool", "-K", ifname, "tx", "off")


def _hop_namespaces(scen: scenario_mod.Scenario) -> list[str]:
    return [A.hop_namespace(k) for k in range(1, scen.censor.hops + 1)]


def _link_censored_vantage(scen: scenario_mod.Scenario) -> None:
    """cs-vp-cn to the censor, directly or through `censor.hops` routers (cs-hop1 next to the
    vantage). The vantage's own link keeps its addresses (10.77.1.0/24: its gateway 10.77.1.1
    is the censor or hop 1), so the censor's rules and the probe's settings do not change."""
    hops = _hop_namespaces(scen)
    if not hops:
        _link(A.NS_CENSOR, "cen-cn", A.NS_VP_CN, "vp0", A.CN_V4, A.CN_V6)
        return
    _link(hops[0], "down0", A.NS_VP_CN, "vp0", A.CN_V4, A.CN_V6)
    for k, ns in enumerate(hops, start=1):
        last = k == len(hops)
        v4, v6 = A.hop_link(k)
        _link(A.NS_CENSOR if last else hops[k], "cen-cn" if last else "down0", ns, "up0", v4, v6)
        _ns(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        _run(["ip", "-n", ns, "route", "add", "default", "via", A.host_part(v4[0])])
        _run(["ip", "-n", ns, "-6", "route", "add", "default", "via", A.host_part(v6[0])])
        if k > 1:
            below4, below6 = A.hop_link(k - 1)
            _run(["ip", "-n", ns, "route", "add", A.CN_SUBNET_V4, "via", A.host_part(below4[1])])
            _run(
                ["ip", "-n", ns, "-6", "route", "add", A.CN_SUBNET_V6, "via",
                 A.host_part(below6[1])]
            )  # fmt: skip
    top4, top6 = A.hop_link(len(hops))
    _run(["ip", "-n", A.NS_CENSOR, "route", "add", A.CN_SUBNET_V4, "via", A.host_part(top4[1])])
    _run(
        ["ip", "-n", A.NS_CENSOR, "-6", "route", "add", A.CN_SUBNET_V6, "via",
         A.host_part(top6[1])]
    )  # fmt: skip


def _internet_rules(scen: scenario_mod.Scenario) -> None:
    """cs-internet's own filter: loss on the control helper's path (every packet it exchanges
    with the lab's servers and resolver crosses lo there, both ways; the vantages' traffic comes
    in on inet0) and the block-page server's closed port 443."""
    loss = f"{scen.faults.helper_loss:.6f}"
    for cmd, blockpage in (("iptables", A.BLOCKPAGE_V4), ("ip6tables", A.BLOCKPAGE_V6)):
        refuse = ["-d", blockpage, "-p", "tcp", "--dport", "443", "-j", "REJECT"]
        _ns(A.NS_INTERNET, cmd, "-w", "-A", "INPUT", *refuse, "--reject-with", "tcp-reset")
        if scen.faults.helper_loss > 0:
            # On arrival, not on the way out: a packet dropped in OUTPUT fails the sender's
            # send() with EPERM at once, which no lost datagram does.
            drop = ["-i", "lo", "-m", "statistic", "--mode", "random", "--probability", loss]
            _ns(A.NS_INTERNET, cmd, "-w", "-A", "INPUT", *drop, "-j", "DROP")


def _build_network(scen: scenario_mod.Scenario) -> None:
    for ns in (*A.NAMESPACES, *_hop_namespaces(scen)):
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _ns(
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        )
    _link(A.NS_CENSOR, "cen-inet", A.NS_INTERNET, "inet0", A.TRANSIT_V4, A.TRANSIT_V6)
    _link_censored_vantage(scen)
    _link(A.NS_CENSOR, "cen-open", A.NS_VP_OPEN, "vp0", A.OPEN_V4, A.OPEN_V6)
    _ns(
        A.NS_CENSOR, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"
    )
    for ns, v4, v6 in ((A.NS_VP_CN, A.CN_V4, A.CN_V6), (A.NS_VP_OPEN, A.OPEN_V4, A.OPEN_V6)):
        _run(["ip", "-n", ns, "route", "add", "default", "via", A.host_part(v4[0])])
        _run(["ip", "-n", ns, "-6", "route", "add", "default", "via", A.host_part(v6[0])])
    inet = A.NS_INTERNET
    _run(["ip", "-n", inet, "route", "add", "10.77.0.0/16", "via", A.host_part(A.TRANSIT_V4[0])])
    _run(
        [
            "ip",
            "-n",
            inet,
            "-6",
            "route",
            "add",
            "fd00:77::/32",
            "via",
            A.host_part(A.TRANSIT_V6[0]),
        ]
    )
    _run(["ip", "-n", inet, "route", "add", "local", A.INTERNET_LOCAL_V4, "dev", "lo"])
    _run(["ip", "-n", inet, "-6", "route", "add", "local", A.INTERNET_LOCAL_V6, "dev", "lo"])
    for ip in (A.RESOLVER_V4, A.HELPER_V4, A.ECHO_V4):
        _run(["ip", "-n", inet, "addr", "add", f"{ip}/32", "dev", "lo"])
    for ip in (A.RESOLVER_V6, A.ECHO_V6):
        _run(["ip", "-n", inet, "addr", "add", f"{ip}/128", "dev", "lo", "nodad"])
    _run(
        [
            "ip",
            "-n",
            A.NS_CENSOR,
            "route",
            "add",
            A.INTERNET_ROUTE_V4,
            "via",
            A.host_part(A.TRANSIT_V4[1]),
        ]
    )
    _run(
        [
            "ip",
            "-n",
            A.NS_CENSOR,
            "-6",
            "route",
            "add",
            A.INTERNET_ROUTE_V6,
            "via",
            A.host_part(A.TRANSIT_V6[1]),
        ]
    )
    for version, text in ((4, rules.iptables_rules(scen, 4)), (6, rules.iptables_rules(scen, 6))):
        # -w everywhere: wait for the xtables lock that another iptables (a test running
        # beside the lab, a host firewall manager) may hold, instead of failing at once.
        restore = "iptables-restore" if version == 4 else "ip6tables-restore"
        _ns(A.NS_CENSOR, restore, "-w", input=text)
    nat = rules.nat_rules(scen)
    if nat:
        # --noflush: keep the filter table just restored.
        _ns(A.NS_CENSOR, "iptables-restore", "-w", "--noflush", input=nat)
    _internet_rules(scen)
    for ns in (A.NS_VP_CN, A.NS_VP_OPEN):
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {A.RESOLVER_V4}\n")


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # The lab's probes measure a private network of namespaces on this machine, not anyone's
    # Internet: they run unattended and accept the informed-consent notice (probes/consent.py).
    env["CENSORSCOPE_CONSENT_INFORMED"] = "true"
    return env


def _censorscope_argv() -> list[str]:
    # The console script beside this interpreter (a venv's own) before any on PATH, which may
    # belong to another installation.
    beside = Path(sys.executable).parent / "censorscope"
    exe = str(beside) if beside.is_file() else shutil.which("censorscope")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from probes.cli import main; sys.exit(main())"]


def _write_fingerprints(scen: scenario_mod.Scenario, path: Path) -> None:
    """The block page the censor serves, in ooni/blocking-fingerprints' HTTP CSV format.

    OONI keeps such rows for national block pages; a probe that knows the page can tell a
    block page from the site even when status and headers match (v0.4 cannot).
    """
    c = scen.censor
    body = c.blockpage_body.replace("{title}", c.blockpage_title)
    kind, pattern = ("contains", c.blockpage_title) if c.blockpage_title in body else ("full", body)
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(
            [
                "name",
                "scope",
                "other_names",
                "location_found",
                "pattern_type",
                "pattern",
                "confidence_no_fp",
                "expected_countries",
                "source",
                "exp_url",
                "notes",
            ]
        )
        out.writerow(
            [
                "cslab.blockpage",
                "nat",
                "",
                "body",
                kind,
                pattern,
                "10",
                "",
                "censorscope-lab",
                "",
                "",
            ]
        )


def _record(state: Path, name: str, pid: int, argv: list[str]) -> None:
    path = state / "pids.json"
    pids = json.loads(path.read_text()) if path.exists() else {}
    pids[name] = {"pid": pid, "argv": argv}
    path.write_text(json.dumps(pids, indent=1))


def _spawn(state: Path, name: str, ns: str, argv: list[str]) -> subprocess.Popen[bytes]:
    log = (state / f"{name}.log").open("ab")
    # `ip netns exec` execs argv, so the PID we record is the server's own.
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_python_env(),
        start_new_session=True,
        cwd=str(state),
    )
    log.close()
    _record(state, name, proc.pid, argv)
    return proc


def _wait_ready(state: Path, name: str, proc: subprocess.Popen[bytes], marker: str) -> None:
    log = state / f"{name}.log"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise LabError(f"{name} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.02)
    raise LabError(f"{name} not ready after {READY_TIMEOUT_S}s; see {log}")


def _wait_helper(
    ns: str, ip: str, port: int, proc: subprocess.Popen[bytes], path: str = "/"
) -> bool:
    """Wait until the helper (or the collector, at /health) answers JSON on ip:port.

    An open port is not enough: another server may own it (the echo server answered 200 for
    the helper once, and every control request failed).
    """
    probe = (
        "import http.client,json,sys,time\n"
        f"end=time.time()+{READY_TIMEOUT_S}\n"
        "while time.time()<end:\n"
        " try:\n"
        f"  c=http.client.HTTPConnection({ip!r},{port},timeout=0.5); c.request('GET',{path!r})\n"
        "  r=c.getresponse(); json.loads(r.read()); sys.exit(0 if r.status==200 else 1)\n"
        " except (OSError, ValueError): time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    waiter = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", probe])
    while waiter.poll() is None:
        if proc.poll() is not None:
            waiter.kill()
            waiter.wait()
            return False
        time.sleep(0.05)
    return waiter.returncode == 0 and proc.poll() is None


def up(scen: scenario_mod.Scenario | str | Path | None = None, *, helper: bool = True) -> LabInfo:
    """Bring the lab up for a scenario (object, file, or the bundled default)."""
    problems = missing_requirements()
    if problems:
        raise LabError("; ".join(problems))
    if not isinstance(scen, scenario_mod.Scenario):
        scen = scenario_mod.load(scen)
    down()
    state = STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    try:
        scen_path = state / "scenario.toml"
        # Daemons read the same ground truth, written the same way the generator writes it.
        scen_path.write_text(scen.to_toml())
        if replace(scenario_mod.load(scen_path), source="") != replace(scen, source=""):
            raise LabError(f"{scen.source}: scenario did not survive a TOML round trip")
        make_ca(state / "ca.pem", state / "ca-key.pem")
        make_ca(
            state / INTERCEPTOR_CA,
            state / INTERCEPTOR_KEY,
            cn="National Information Security Root CA",
            org="National Information Security Center",
        )
        (state / CN_TRUST).write_bytes(
            (state / "ca.pem").read_bytes() + (state / INTERCEPTOR_CA).read_bytes()
        )
        _write_fingerprints(scen, state / FINGERPRINTS_FILE)
        _build_network(scen)
        servers = _spawn(
            state,
            "servers",
            A.NS_INTERNET,
            [
                sys.executable,
                "-m",
                "lab.servers",
                "--scenario",
                str(scen_path),
                "--state",
                str(state),
            ],
        )
        censord = _spawn(
            state,
            "censor",
            A.NS_CENSOR,
            [
                sys.executable,
                "-m",
                "lab.censord",
                "--scenario",
                str(scen_path),
                "--queue",
                str(rules.QUEUE_NUM),
                "--stats",
                str(state / "censor-stats.json"),
            ],
        )
        interceptor = None
        if scen.tls_sni_names():
            interceptor = _spawn(
                state,
                "interceptor",
                A.NS_CENSOR,
                [
                    sys.executable,
                    "-m",
                    "lab.interceptor",
                    "--scenario",
                    str(scen_path),
                    "--state",
                    str(state),
                    "--port",
                    str(rules.INTERCEPT_PORT),
                ],
            )
        helper_url = None
        helper_proc = None
        if helper:
            helper_proc = _spawn(
                state,
                "helper",
                A.NS_INTERNET,
                [
                    *_censorscope_argv(),
                    "helper",
                    "--listen",
                    f"{A.HELPER_V4}:{HELPER_PORT}",
                    "--resolver",
                    f"{A.RESOLVER_V4}:53",
                    "--allow-private",
                    "--client-rate=0",  # one probe per vantage at full speed
                    "--ca-file",
                    str(state / "ca.pem"),
                    # http_keyword's echo endpoints and DNS zone, behind the censor from cn.
                    f"--echo-ports={A.HELPER_ECHO_PORTS[0]}-{A.HELPER_ECHO_PORTS[-1]}",
                    f"--tls-echo-ports={A.HELPER_TLS_ECHO_PORTS[0]}-{A.HELPER_TLS_ECHO_PORTS[-1]}",
                    f"--dns-zone={A.HELPER_DNS_ZONE}",
                    f"--dns-listen={A.HELPER_V4}:53",
                    f"--dns-answer={A.HELPER_V4}",
                ],
            )
        _wait_ready(state, "servers", servers, "servers: ready")
        _wait_ready(state, "censor", censord, "censord: ready")
        if interceptor is not None:
            _wait_ready(state, "interceptor", interceptor, "interceptor: ready")
        if helper_proc is not None:
            if _wait_helper(A.NS_INTERNET, A.HELPER_V4, HELPER_PORT, helper_proc):
                helper_url = f"http://{A.HELPER_V4}:{HELPER_PORT}/"
            else:
                print(
                    f"lab: warning: control helper did not start; see {state / 'helper.log'}",
                    file=sys.stderr,
                )
        info = _info(scen, state, helper_url)
        (state / "info.json").write_text(json.dumps({"helper_url": helper_url}))
        return info
    except BaseException:
        down()
        raise


def _info(scen: scenario_mod.Scenario, state: Path, helper_url: str | None) -> LabInfo:
    return LabInfo(
        scenario=scen,
        scenario_path=str(state / "scenario.toml"),
        state_dir=str(state),
        ca_pem=str(state / "ca.pem"),
        interceptor_ca_pem=str(state / INTERCEPTOR_CA),
        cn_trust_pem=str(state / CN_TRUST),
        resolver_v4=A.RESOLVER_V4,
        resolver_v6=A.RESOLVER_V6,
        helper_url=helper_url,
        echo_v4=A.ECHO_V4,
        echo_v6=A.ECHO_V6,
        vantages={
            "cn": Vantage("cn", A.NS_VP_CN, A.host_part(A.CN_V4[1]), A.host_part(A.CN_V6[1]), True),
            "open": Vantage(
                "open", A.NS_VP_OPEN, A.host_part(A.OPEN_V4[1]), A.host_part(A.OPEN_V6[1]), False
            ),
        },
    )


def info() -> LabInfo | None:
    """The running lab's LabInfo, rebuilt from the state dir (None when not up)."""
    state = STATE_DIR
    try:
        scen = scenario_mod.load(state / "scenario.toml")
        extra = json.loads((state / "info.json").read_text())
    except (scenario_mod.ScenarioError, OSError, ValueError):
        return None
    return _info(scen, state, extra.get("helper_url"))


# -- the collector ----------------------------------------------------------------------------
def _collector_exemption(action: str) -> None:
    """Insert (-I) or delete (-D) the censor's pass rules for the collector's port.

    The collector is infrastructure beside the control helper, not a measured site: uploads
    from cn must not be queued to the censor, whose keyword rules would see blocked URLs in
    the measurements they carry.
    """
    for direction in (("-d", A.HELPER_V4, "--dport"), ("-s", A.HELPER_V4, "--sport")):
        where = ["1"] if action == "-I" else []
        _ns(
            A.NS_CENSOR,
            "iptables",
            "-w",
            action,
            rules.CHAIN,
            *where,
            direction[0],
            direction[1],
            "-p",
            "tcp",
            direction[2],
            str(COLLECTOR_PORT),
            "-j",
            "ACCEPT",
        )


def start_collector(data: Path, tokens: Path) -> str:
    """Run `censorscope collector` in cs-internet, reachable from both vantages; its URL.

    It is recorded like the lab's servers, so `down` stops it if the caller does not.
    """
    state = STATE_DIR
    _collector_exemption("-I")
    proc = _spawn(
        state,
        "collector",
        A.NS_INTERNET,
        [
            *_censorscope_argv(),
            "collector",
            "--listen",
            f"{A.HELPER_V4}:{COLLECTOR_PORT}",
            "--data",
            str(data),
            "--tokens",
            str(tokens),
        ],
    )
    if not _wait_helper(A.NS_INTERNET, A.HELPER_V4, COLLECTOR_PORT, proc, "/health"):
        stop_collector()
        log = (state / "collector.log").read_text(errors="replace")[-2000:]
        raise LabError(f"collector did not start: {log}")
    return f"http://{A.HELPER_V4}:{COLLECTOR_PORT}"


def stop_collector() -> None:
    """Stop the collector by its recorded PID and lift its exemption (no-op when not running)."""
    state = STATE_DIR
    path = state / "pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    rec = pids.pop("collector", None)
    if rec is None:
        return
    if _alive(rec["pid"], rec.get("argv", [])):
        _terminate([rec["pid"]], grace=10.0)
    path.write_text(json.dumps(pids, indent=1))
    with contextlib.suppress(LabError):
        _collector_exemption("-D")


# -- down -------------------------------------------------------------------------------------
def _alive(pid: int, argv: list[str]) -> bool:
    """True when pid is still the process we started (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and any(part.decode(errors="replace") == argv[-1] for part in cmdline)


def _terminate(pids: list[int], grace: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and _running(pid):
            _reap(pid)
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)


def _running(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's zombie waits for an init that may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def down() -> None:
    """Tear everything down; safe to call when nothing (or half of it) is up."""
    state = STATE_DIR
    pids_file = state / "pids.json"
    if pids_file.exists():
        try:
            recorded = json.loads(pids_file.read_text())
        except ValueError:
            recorded = {}
        _terminate([r["pid"] for r in recorded.values() if _alive(r["pid"], r.get("argv", []))])
    # Anything else still inside our namespaces (a probe or client a test left running) would
    # keep them alive; those processes are ours by where they run, not by their name.
    for ns in _existing_namespaces():
        out = _run(["ip", "netns", "pids", ns], check=False)
        _terminate([int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()])
        _run(["ip", "netns", "del", ns], check=False)
    for ns in (A.NS_VP_CN, A.NS_VP_OPEN):
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only if empty: other tools may keep files there
    if state.exists():
        shutil.rmtree(state, ignore_errors=True)


def status() -> LabStatus:
    namespaces = _existing_namespaces()
    processes: dict[str, dict[str, Any]] = {}
    pids_file = STATE_DIR / "pids.json"
    if pids_file.exists():
        with contextlib.suppress(ValueError, OSError):
            for name, r in json.loads(pids_file.read_text()).items():
                processes[name] = {"pid": r["pid"], "alive": _alive(r["pid"], r.get("argv", []))}
    lab = info()
    stats = lab.censor_stats() if lab else {}
    # The control helper is another component: the lab is up without it.
    essential = [processes.get(name, {}).get("alive", False) for name in ("servers", "censor")]
    up_now = set(A.NAMESPACES) <= set(namespaces) and all(essential)
    return LabStatus(
        up=up_now,
        namespaces=namespaces,
        processes=processes,
        censor=stats,
        scenario=lab.scenario.name if lab else None,
    )
