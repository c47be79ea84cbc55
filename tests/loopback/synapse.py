"""A real Synapse homeserver on loopback for the `matrix` channel tests.

`start_synapse` writes a minimal config (SQLite, one HTTP listener on 127.0.0.1:<free port>,
no federation, rate limits lifted so that a test run is not throttled, our keyword-filter
module per region), starts `python -m synapse.app.homeserver` as a subprocess and waits for
/_matrix/client/versions. Users are registered through the shared-secret admin API, as
`register_new_matrix_user` does, without paying for another Python start. Stdlib HTTP only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.loopback.web import closed_port

SERVER_NAME = "censorscope.test"
START_TIMEOUT = 90.0
_LIFTED = {"per_second": 10000, "burst_count": 10000}


def synapse_available() -> bool:
    return importlib.util.find_spec("synapse") is not None


@dataclass
class Region:
    """Users whose localpart starts with `prefix` are filtered with `rules` in `mode`."""

    prefix: str
    mode: str
    rules: list[list[str]]


@dataclass
class Account:
    user_id: str
    localpart: str
    password: str
    access_token: str


@dataclass
class Homeserver:
    url: str
    root: Path
    shared_secret: str
    process: subprocess.Popen[bytes]
    start_seconds: float
    accounts: dict[str, Account] = field(default_factory=dict)

    def register(self, localpart: str, password: str | None = None) -> Account:
        """A new user through the shared-secret admin API (nonce, then an HMAC of the user)."""
        password = password or secrets.token_urlsafe(12)
        nonce = _request("GET", f"{self.url}/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        fields = [nonce, localpart, password, "notadmin"]
        mac.update(b"\x00".join(f.encode() for f in fields))
        reply = _request(
            "POST",
            f"{self.url}/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": False,
                "mac": mac.hexdigest(),
            },
        )
        account = Account(reply["user_id"], localpart, password, reply["access_token"])
        self.accounts[localpart] = account
        return account

    def log(self) -> str:
        path = self.root / "synapse.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _request(method: str, url: str, payload: Any = None, token: str | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def _config(root: Path, port: int, secret: str, regions: list[Region]) -> dict[str, Any]:
    return {
        "server_name": SERVER_NAME,
        "pid_file": str(root / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(root / "homeserver.db")}},
        "log_config": str(root / "log.yaml"),
        "media_store_path": str(root / "media"),
        "signing_key_path": str(root / "signing.key"),
        "registration_shared_secret": secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        "rc_message": _LIFTED,
        "rc_registration": _LIFTED,
        "rc_room_creation": _LIFTED,
        "rc_login": {"address": _LIFTED, "account": _LIFTED, "failed_attempts": _LIFTED},
        "rc_joins": {"local": _LIFTED, "remote": _LIFTED},
        "rc_invites": {"per_room": _LIFTED, "per_user": _LIFTED, "per_issuer": _LIFTED},
        "modules": [
            {
                "module": "synapse_filter.KeywordFilter",
                "config": {"region_prefix": r.prefix, "mode": r.mode, "rules": r.rules},
            }
            for r in regions
        ],
    }


LOG_CONFIG = """\
version: 1
formatters:
  plain: {format: '%(asctime)s %(name)s %(levelname)s %(message)s'}
handlers:
  file: {class: logging.FileHandler, filename: '%s', formatter: plain}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
"""


@contextmanager
def start_synapse(regions: list[Region]) -> Iterator[Homeserver]:
    """A running homeserver in a temporary directory, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="cs-synapse-"))
    modules = root / "modules"
    modules.mkdir()
    # Our module sits alone on Synapse's path: tests/loopback/synapse.py would shadow `synapse`.
    shutil.copy(Path(__file__).with_name("synapse_filter.py"), modules / "synapse_filter.py")
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    (root / "signing.key").write_text(f"ed25519 a_cs {seed}\n")
    (root / "log.yaml").write_text(LOG_CONFIG.replace("%s", str(root / "synapse.log")))
    port, secret = closed_port("127.0.0.1"), secrets.token_hex(16)
    config = root / "homeserver.yaml"
    config.write_text(json.dumps(_config(root, port, secret, regions), indent=1))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(modules)}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "stderr.log", "wb"),  # noqa: SIM115 - the child owns it
    )
    server = Homeserver(f"http://127.0.0.1:{port}", root, secret, process, 0.0)
    try:
        while True:
            try:
                _request("GET", f"{server.url}/_matrix/client/versions")
                break
            except (OSError, urllib.error.URLError) as exc:
                if process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                    stderr = (root / "stderr.log").read_text(errors="replace")[-4000:]
                    log = f"{stderr}{server.log()}"
                    raise RuntimeError(f"synapse did not start: {exc}\n{log}") from exc
                time.sleep(0.1)
        server.start_seconds = round(time.monotonic() - started, 1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(root, ignore_errors=True)
