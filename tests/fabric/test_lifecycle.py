"""Building and removing fabrics leaves nothing behind: on exit, on an error, and after a SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import pytest

from qroute.fabric import Fabric, FabricError, FabricSpec, LinkSpec, cleanup_stale, host, leftovers
from qroute.fabric.netns import child_env
from tests.fabric.conftest import requires_netns

pytestmark = [requires_netns, pytest.mark.netns]

LINKS = (LinkSpec("fast"), LinkSpec("shaped", rate_mbit=100), LinkSpec("far", "delay", delay_us=200))
OWNER = """
import sys, time
from qroute.fabric import Fabric, FabricSpec, LinkSpec
links = (LinkSpec("fast"), LinkSpec("far", "delay", delay_us=200))
with Fabric(FabricSpec(links)) as fabric:
    print(fabric.tag, *fabric.forwarder_pids(), flush=True)
    time.sleep(60)
"""


def wait_until(condition, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kinds(lines: list[str]) -> set[str]:
    return {line.split()[0] for line in lines}


def test_exit_leaves_nothing():
    with Fabric(LINKS) as fabric:
        tag = fabric.tag
        assert kinds(leftovers(tag)) == {"netns", "link", "process", "record"}
        assert all(host.process_start(pid) for pid in fabric.forwarder_pids())
    assert leftovers(tag) == []


def test_error_in_body_leaves_nothing():
    with pytest.raises(RuntimeError, match="boom"):
        with Fabric(LINKS) as fabric:
            tag = fabric.tag
            raise RuntimeError("boom")
    assert leftovers(tag) == []


def test_error_while_building_leaves_nothing(monkeypatch):
    tags = []
    real_open_tun = host.open_tun

    def failing_open_tun(name):  # the veths and one TUN exist when this fails
        tags.append(name.split("-")[1])
        if len(tags) == 2:
            raise FabricError("injected TUN failure")
        return real_open_tun(name)

    monkeypatch.setattr(host, "open_tun", failing_open_tun)
    with pytest.raises(FabricError, match="injected"):
        with Fabric(LINKS):
            pass
    assert leftovers(tags[0]) == []


def test_sigkilled_owner_is_cleaned_by_cleanup_stale():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, env=child_env())
    tag, *forwarders = owner.stdout.readline().split()
    with Fabric([LinkSpec("live")]) as live:  # a fabric whose owner is alive must survive cleanup_stale
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
        # the forwarder watches its owner and exits on its own; namespaces and links wait for cleanup
        assert wait_until(lambda: not any(host.process_start(int(pid)) for pid in forwarders))
        assert kinds(leftovers(tag)) == {"netns", "link", "record"}
        removed = cleanup_stale()
        assert leftovers(tag) == [] and any(tag in line for line in removed)
        assert kinds(leftovers(live.tag)) == {"netns", "link", "record"}
    assert leftovers(live.tag) == []


def test_tags_are_unique_and_a_taken_tag_is_refused():
    with Fabric([LinkSpec("a")]) as first, Fabric([LinkSpec("a")]) as second:
        assert first.tag != second.tag
        assert first.control_address(0) != second.control_address(0)
        with pytest.raises(FabricError, match=f"tag '{first.tag}' is in use"):
            with Fabric(FabricSpec((LinkSpec("a"),), tag=first.tag)):
                pass
    assert leftovers(first.tag) == [] and leftovers(second.tag) == []
    assert os.path.isdir("/run/qroute-fabric")
