"""The settings of a run, recorded in its manifest so that `run --resume` continues it as it was.

A resumed report must be measured as it began: the same helper, resolver, fingerprints, CA
file, time budget and nettest options. Mixing two sets of settings in one report would make its
measurements incomparable without saying so. So a new run records every setting it resolved
(flag, else config); a resume restores them, and a flag that disagrees with the recorded value
is an error naming the flag, never a silent override. Reports written before settings were
recorded keep the old behaviour (inputs restored, other settings from flags and config).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from probes.config import Config

if TYPE_CHECKING:
    from probes.run_command import RunRequest

# Manifest options key holding the resolved settings.
SETTINGS = "settings"

# Nettest options whose flag is not `--` + the key with dashes.
_OPTION_FLAGS = {
    "dns_resolvers": "--dns-resolver",
    "dns_probe_addresses": "--dns-probe-address",
    "placements": "--placement",
    "encodings": "--encoding",
    "pcap_dir": "--pcap",
    "trace_keyword": "--keyword",
}


def _absolute(path: Path | str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def resolve(req: RunRequest, cfg: Config, default_budget: float | None = None) -> dict[str, Any]:
    """The settings a new run uses: each flag, else the nettest's own budget (censor_trace's
    follows its pacing), else the config's value. Paths are absolute so that a resume from
    another directory finds the same files."""
    return {
        "helpers": list(req.helpers or cfg.probe.helpers),
        "resolver": req.resolver or cfg.probe.resolver,
        "timeout": float(req.timeout or default_budget or cfg.probe.timeout),
        "ca_file": _absolute(req.ca_file or cfg.probe.ca_file),
        "fingerprints": [str(_absolute(p)) for p in (req.fingerprints or cfg.probe.fingerprints)],
        "concurrency": int(req.concurrency or cfg.probe.concurrency),
    }


def _flags_given(req: RunRequest) -> dict[str, tuple[str, Any]]:
    """The settings the user typed on this command line: key -> (flag, normalised value)."""
    given: dict[str, tuple[str, Any]] = {}
    if req.helpers:
        given["helpers"] = ("--helper", list(req.helpers))
    if req.resolver:
        given["resolver"] = ("--resolver", req.resolver)
    if req.timeout is not None:
        given["timeout"] = ("--timeout", float(req.timeout))
    if req.ca_file:
        given["ca_file"] = ("--ca-file", _absolute(req.ca_file))
    if req.fingerprints:
        given["fingerprints"] = ("--fingerprints", [_absolute(p) for p in req.fingerprints])
    if req.concurrency is not None:
        given["concurrency"] = ("--concurrency", int(req.concurrency))
    return given


def restore(
    req: RunRequest,
    cfg: Config,
    saved: dict[str, Any],
    fail: Callable[[str], NoReturn],
) -> dict[str, Any]:
    """Put the interrupted run's inputs and options back into ``req`` and return its settings;
    ``fail`` names the first flag that disagrees with them."""
    report = req.resume

    def conflict(flag: str, given: Any, recorded: Any) -> NoReturn:
        fail(
            f"--resume {report}: {flag} {given!r} differs from the interrupted run's "
            f"{recorded!r}; leave {flag} out to continue the report as it began"
        )

    saved_lists = [_absolute(p) for p in saved.get("testlists") or []]
    saved_inputs = list(saved.get("inputs") or [])
    if req.inputs and req.inputs != saved_inputs:
        conflict("--input", req.inputs, saved_inputs)
    if req.testlists and [_absolute(p) for p in req.testlists] != saved_lists:
        conflict("--testlist", [str(p) for p in req.testlists], saved_lists)
    req.inputs = saved_inputs
    req.testlists = [Path(p) for p in saved_lists if p]
    saved_repeat = int(saved.get("repeat") or 1)
    if req.repeat != 1 and req.repeat != saved_repeat:
        conflict("--repeat", req.repeat, saved_repeat)
    req.repeat = saved_repeat
    saved_keywords = _absolute(saved.get("keywords"))
    if req.keywords is not None and _absolute(req.keywords) != saved_keywords:
        conflict("--keywords", str(req.keywords), saved_keywords)
    req.keywords = Path(saved_keywords) if saved_keywords else None
    saved_options = dict(saved.get("nettest_options") or {})
    for key, value in req.nettest_options.items():
        if saved_options.get(key) != value:
            flag = _OPTION_FLAGS.get(key, "--" + key.replace("_", "-"))
            conflict(flag, value, saved_options.get(key))
    req.nettest_options = saved_options

    settings = saved.get(SETTINGS)
    if not isinstance(settings, dict):
        return resolve(req, cfg)  # a report from before settings were recorded
    for key, (flag, value) in _flags_given(req).items():
        if value != settings.get(key):
            conflict(flag, value, settings.get(key))
    return {**resolve(req, cfg), **settings}
