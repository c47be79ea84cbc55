"""Hypothesis against a real collector process: malformed, oversized and mistyped submissions
are refused with a 4xx, never a 5xx, and the collector keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.collector_validate import REQUIRED_KEYS
from tests.test_collector_support import CollectorProcess, make_token, measurement, post

MAX_BYTES = 4096
TOKEN = make_token()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CollectorProcess, str]]:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "tokens").write_text(f"fuzz {TOKEN}\n")
    proc = CollectorProcess(data=base / "data", tokens=base / "tokens")
    proc.start("--max-measurement-bytes", str(MAX_BYTES))
    status, body = post(proc.url + "/report", b'{"test_name": "web_connectivity"}', TOKEN)
    assert status == 200
    yield proc, body["report_id"]
    proc.stop()


def _dumps(value: Any) -> bytes:
    # The standard library, unlike orjson, writes integers beyond 64 bits: send those too.
    return json.dumps(value).encode()


def _valid() -> dict[str, Any]:
    return measurement("fuzz", "20240101T000000Z_webconnectivity_ZZ_0_n1_fuzz", 0).to_dict()


def _send(collector: tuple[CollectorProcess, str], body: bytes) -> int:
    proc, report_id = collector
    status, _ = post(f"{proc.url}/report/{report_id}", body, TOKEN)
    return status


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes_are_refused(collector: tuple[CollectorProcess, str], body: bytes) -> None:
    assert 400 <= _send(collector, body) < 500


@FUZZ
@given(value=json_values)
def test_any_json_that_is_not_a_submission_is_refused(
    collector: tuple[CollectorProcess, str], value: Any
) -> None:
    assert 400 <= _send(collector, _dumps(value)) < 500
    envelope = {"format": "json", "content": value}
    assert 400 <= _send(collector, _dumps(envelope)) < 500


@FUZZ
@given(key=st.sampled_from(sorted(REQUIRED_KEYS)), value=json_values, drop=st.booleans())
def test_a_mistyped_or_missing_base_key_is_refused(
    collector: tuple[CollectorProcess, str], key: str, value: Any, drop: bool
) -> None:
    content = _valid()
    if drop:
        del content[key]
    else:
        content[key] = value
    status = _send(collector, _dumps({"format": "json", "content": content}))
    # A replacement that happens to be valid (a string uid, another version...) may be stored.
    assert status < 500
    if drop or not isinstance(value, REQUIRED_KEYS[key]) or isinstance(value, bool):
        assert 400 <= status < 500


@FUZZ
@given(size=st.integers(min_value=MAX_BYTES + 1, max_value=4 * MAX_BYTES), char=st.characters())
def test_oversized_submissions_get_413(
    collector: tuple[CollectorProcess, str], size: int, char: str
) -> None:
    content = _valid()
    content["test_keys"]["padding"] = char * size
    assert _send(collector, _dumps({"format": "json", "content": content})) == 413


def test_still_serving_after_the_fuzz(collector: tuple[CollectorProcess, str]) -> None:
    proc, report_id = collector
    assert proc.get("/health")["status"] == "ok"
    content = {**_valid(), "report_id": report_id}  # filed under the report it is posted to
    assert _send(collector, _dumps({"format": "json", "content": content})) == 200
