"""The paths of this instance: one process group per fabric link, by path name.

Without an emulated fabric there are none and every message travels on the world group
(the profile's path, e.g. `gloo-loopback`, names it). With one (`ClusterSpec.links`), the
launcher opens a gloo group per link, bound to that link's interface in each namespace,
and registers it here under the link's name, which is the path's name in the profile.
With `ClusterSpec.shm` it registers two: the world group (`gloo-loopback`) and the
shared-memory path (`shm`, `runtime.shm`). With `ClusterSpec.symm` (NCCL) the
symmetric-memory path between the GPUs (`nvlink-symm`, `runtime.symm`) is the only one and
carries every message (`only`): the world group then carries none, so no holder keeps an
NCCL receive pending (a kernel that runs until a message comes) while it launches others.
Under CUDA's lazy module loading, the first launch of a kernel may wait for the kernels
running on the device; beside a pending NCCL receive it would wait for ever (measured on
two H200s: the symmetric-memory path's first signal kernel, launched while the world
group's receive was posted, hung the holder).
"""

from __future__ import annotations

import os

import torch.distributed as dist

LOOPBACK = "gloo-loopback"  # the world group's path under gloo without a fabric
NCCL = "nccl-p2p"  # the world group's path under NCCL: GPU to GPU (NVLink or PCIe, whichever NCCL picks)
_GROUPS: dict[str, object] = {}  # None: the world group itself, registered as a path beside the others
_DEFAULT: list = [None]  # the group of a message on no path or an unopened one: the world group, unless `only`


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


def only(name: str, group) -> None:
    """Make `group` this instance's one path: every message travels on it, none on the world group."""
    _GROUPS.clear()
    _GROUPS[name] = group
    _DEFAULT[0] = group


def world_carries_messages() -> bool:
    """False once `only` made another group carry every message (no message, STOP or keep-alive on the world)."""
    return _DEFAULT[0] is None


def group(name: str | None):
    """The process group of path `name`; the default (the world group, None) when no such path was opened."""
    return _GROUPS.get(name, _DEFAULT[0]) if name else _DEFAULT[0]


def chunk_bytes(name: str | None) -> int | None:
    """The bytes path `name` moves a message in, one hand-off at a time (the shared-memory path's slot: a longer
    message waits for each chunk to be read before the next is written); None for a stream (TCP, NCCL)."""
    return getattr(group(name), "slot", None)


def opened(profile):
    """`profile` planning only on the paths this cluster opened (`names()`, or the world group's path without any),
    in the profile's order; unchanged where it names none of them (a profile of another cluster prices that cluster:
    its messages travel on the world group). Without this, a profile naming `shm` on a cluster without it would price
    shared memory for messages the world group carries (a demo with the `--shm` validation's profile did: its routes
    priced 17% low)."""
    from dataclasses import replace

    here = names() or [world_path()]
    usable = tuple(n for n in profile.default_paths if n in here)
    return replace(profile, default_paths=usable) if usable else profile


def groups() -> list:
    """Every opened path group besides the world group."""
    return [g for g in _GROUPS.values() if g is not None]


def names() -> list[str]:
    return list(_GROUPS)


def world_path() -> str:
    """The profile's name of the world group's path: NCCL point-to-point between GPUs, or gloo over loopback."""
    return NCCL if dist.is_initialized() and dist.get_backend() == "nccl" else LOOPBACK
