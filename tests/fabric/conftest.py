"""Fixtures for fabric tests: they build real namespaces, so they need root and `ip netns`."""

import pytest

from qroute.fabric import Fabric, FabricSpec, LinkSpec, netns_available

WHY_NOT = netns_available()
requires_netns = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}")

SHAPED_MBIT = 200.0
DELAY_US = 500.0


def pytest_configure(config):
    config.addinivalue_line("markers", "netns: builds network namespaces (needs root; skipped otherwise)")


@pytest.fixture(scope="module")
def fabric():
    """fast: plain veth; shaped: veth at 200 Mbit/s; far: delay line of 500 us each way."""
    spec = FabricSpec((LinkSpec("fast"), LinkSpec("shaped", rate_mbit=SHAPED_MBIT),
                       LinkSpec("far", "delay", delay_us=DELAY_US)))  # fmt: skip
    with Fabric(spec) as built:
        yield built
