"""probes.ownip finds every address of every interface (issue 13 item 6).

Run in a private network namespace (`unshare -n`, gone with the process; not the lab's), where
the loopback interface gets two extra IPv4 addresses and an IPv6 one: SIOCGIFADDR would see only
the first IPv4 address of `lo`, 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

SETUP = (
    "ip link set lo up && ip addr add 198.51.100.7/32 dev lo && "
    "ip addr add 198.51.100.8/32 dev lo && ip -6 addr add 2001:db8::7/128 dev lo && "
    "ip -6 addr add fe80::1234:56ff:fe78:9abc/64 dev lo && "
)
PRINT = (
    "import json; from probes.ownip import local_addresses; print(json.dumps(local_addresses()))"
)


def _in_private_netns() -> list[str]:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip to make a private network namespace")
    command = SETUP + f"{sys.executable} -c '{PRINT}'"
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_every_address_of_every_interface() -> None:
    found = _in_private_netns()
    assert {"198.51.100.7", "198.51.100.8", "2001:db8::7"} <= set(found)
    assert "fe80::1234:56ff:fe78:9abc" in found  # EUI-64 link-local: it carries the MAC
    assert "127.0.0.1" not in found and "::1" not in found
