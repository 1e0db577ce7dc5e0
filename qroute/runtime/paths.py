"""The paths of this instance: one process group per fabric link, by path name.

Without an emulated fabric there are none and every message travels on the world group
(the profile's path, e.g. `gloo-loopback`, names it). With one (`ClusterSpec.links`), the
launcher opens a gloo group per link, bound to that link's interface in each namespace,
and registers it here under the link's name, which is the path's name in the profile.
With `ClusterSpec.shm` it registers two: the world group (`gloo-loopback`) and the
shared-memory path (`shm`, `runtime.shm`).
"""

from __future__ import annotations

import os

import torch.distributed as dist

LOOPBACK = "gloo-loopback"  # the world group's path under gloo without a fabric
_GROUPS: dict[str, object] = {}  # None: the world group itself, registered as a path beside the others


def open_paths(interfaces: dict[str, str], ranks: list[int]) -> None:
    """Open one gloo group per path, each bound to its interface (a collective: same order on every rank)."""
    before = os.environ.get("GLOO_SOCKET_IFNAME")
    try:
        for name, interface in interfaces.items():
            os.environ["GLOO_SOCKET_IFNAME"] = interface  # read by gloo when the group is built
            _GROUPS[name] = dist.new_group(ranks=ranks, backend="gloo")
    finally:
        if before is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = before


def register(name: str, group) -> None:
    """Add path `name` reached over `group` (None: the world group; a `direct` group: `runtime.shm`)."""
    _GROUPS[name] = group


def group(name: str | None):
    """The process group of path `name`, or None (the world group) when no such path was opened."""
    return _GROUPS.get(name) if name else None


def groups() -> list:
    """Every opened path group besides the world group."""
    return [g for g in _GROUPS.values() if g is not None]


def names() -> list[str]:
    return list(_GROUPS)
