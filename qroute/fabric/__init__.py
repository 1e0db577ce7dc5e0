"""Emulated fabrics: two network namespaces joined by several links (veth, tc-shaped, userspace delay lines)."""

from qroute.fabric.host import FabricError, enter_namespace, netns_available
from qroute.fabric.netns import Control, Fabric, Link
from qroute.fabric.probe import measure_rate, measure_rtt
from qroute.fabric.records import cleanup_stale, leftovers
from qroute.fabric.spec import FabricSpec, LinkSpec

__all__ = ["Control", "Fabric", "FabricError", "FabricSpec", "Link", "LinkSpec", "cleanup_stale",
           "enter_namespace", "leftovers", "measure_rate", "measure_rtt", "netns_available"]  # fmt: skip
