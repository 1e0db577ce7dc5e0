"""Host-side errors are one line and say what is wrong; no root needed (failures are simulated)."""

import shutil

import pytest

from qroute.errors import QrouteError
from qroute.fabric import Fabric, FabricError, LinkSpec, enter_namespace, host, leftovers


def test_not_root_is_refused_before_anything_is_made(monkeypatch):
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    with pytest.raises(FabricError, match="needs root.*uid 1000"):
        with Fabric([LinkSpec("a")]):
            pass
    assert host.netns_available() is not None


def test_missing_tools_are_named(monkeypatch):
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)
    monkeypatch.setattr(host.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    with pytest.raises(FabricError, match="`tc` not found"):
        host.preflight(tun=False, tc=True)
    host.preflight(tun=False, tc=False)
    monkeypatch.setattr(host, "TUN_PATH", host.Path("/nonexistent/tun"))
    with pytest.raises(FabricError, match="/nonexistent/tun missing"):
        host.preflight(tun=True, tc=False)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_failing_command_shows_command_and_stderr():
    with pytest.raises(FabricError) as info:
        host.ip("link", "show", "dev", "qfnosuchdev0")
    message = str(info.value)
    assert message.startswith("`ip link show dev qfnosuchdev0` failed (exit 1): ") and "\n" not in message
    assert "qfnosuchdev0" in message.split(": ", 1)[1]


def test_entering_a_missing_namespace_is_an_error():
    with pytest.raises(QrouteError, match="'qroute-nosuch-0'.*expected a live fabric"):
        enter_namespace("qroute-nosuch-0")


def test_leftovers_lists_strings():
    assert all(isinstance(x, str) for x in leftovers())
