"""Shared pytest fixtures and hooks. Sections: consent, missing packages under CI, parallel runs,
async backend, loopback servers (tests/loopback/)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `python -m pytest` puts the repo root on sys.path; plain `pytest` does not.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests import missing  # noqa: E402
from tests.loopback import (  # noqa: E402
    FakeDNSServer,
    LoopbackSuite,
    ServerThread,
    TestCA,
    start_suite,
)

# --- consent ----------------------------------------------------------------------------------
# The suite is an unattended run of many `run`/`isolate` subprocesses: it accepts the informed-
# consent notice (probes/consent.py) through the environment, which every subprocess inherits,
# and points XDG_CONFIG_HOME at a private directory so no test reads or writes the real
# ~/.config. tests/test_consent.py removes the acceptance where it tests the notice itself.
os.environ["CENSORSCOPE_CONSENT_INFORMED"] = "true"
_XDG = tempfile.mkdtemp(prefix="censorscope-tests-xdg-")
os.environ["XDG_CONFIG_HOME"] = _XDG
os.environ["XDG_STATE_HOME"] = _XDG  # http_keyword's endpoint taints between runs
atexit.register(shutil.rmtree, _XDG, True)


# --- missing packages under CI ----------------------------------------------------------------


def _fail_missing(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI a skip for a missing package (tests/missing.py) is a failure."""
    if report.skipped and missing.in_ci() and missing.PREFIX in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"CI=true and a test's requirement is not installed: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not hasattr(report, "wasxfail"):
        _fail_missing(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_missing(outcome.get_result())  # type: ignore[attr-defined]


# --- parallel runs (pytest-xdist) -------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n N --dist loadfile`, with tests/lab/ counted as one file: a file's tests run in one
    worker (module fixtures bind fixed addresses, e.g. oohelperd's 443, once), and so do all
    the lab's, since the lab is one set of named network namespaces per machine
    (tests/lab/conftest.py). xdist's own loadgroup cannot say this under pytest 9.2: it
    renames nodes through an attribute pytest no longer reads."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LabAsOneFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/lab/" if path.startswith("tests/lab/") else path

    return LabAsOneFile(config, log)


# --- async backend ----------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio: the probe is asyncio-only."""
    return "asyncio"


# --- loopback servers -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A private CA; ``test_ca.ca_pem_path`` is what the probe should trust."""
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def loopback(test_ca: TestCA) -> Iterator[LoopbackSuite]:
    """HTTP, HTTPS, wrong-name HTTPS, blockpage, reset-on-keyword, silent, closer, closed port,
    all on 127.0.0.2 (see tests/loopback/suite.py)."""
    suite = start_suite("127.0.0.2", ca=test_ca)
    yield suite
    suite.close()


@pytest.fixture
def dns_server() -> Iterator[Callable[..., FakeDNSServer]]:
    """Factory: ``dns_server(zone={...}, mode="inject_before", ...)`` -> a started
    FakeDNSServer on its own thread (arguments as FakeDNSServer), stopped after the test."""
    thread = ServerThread("fake-dns")

    def make(*args: Any, **kwargs: Any) -> FakeDNSServer:
        kwargs.setdefault("host", "127.0.0.3")
        return thread.start(FakeDNSServer(*args, **kwargs))

    yield make
    thread.close()
