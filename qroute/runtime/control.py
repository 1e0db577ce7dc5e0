"""Rank 0's control of the holders beyond the requests: telling them to stop, and keeping them alive while a sweep
leaves some groups idle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from qroute.errors import QrouteError
from qroute.runtime import transport
from qroute.runtime.holder import PING, PONG, STOP


def stop_holders(rank: int, holders: Sequence[int]) -> None:
    """Tell every holder this requester needs nothing more, on the world and on every path group."""
    from qroute.runtime import paths

    for group in (None, *paths.groups()) if paths.world_carries_messages() else paths.groups():
        for h in holders:
            if h != rank:
                transport.send(h, STOP, group=group)


@dataclass
class KeepAlive:
    """Pings every holder on every group that carries messages (the world group, each path group) once `every_s`
    seconds have passed since the last time it did (a no-op without path groups). With path groups a sweep sends on one
    group at a time for minutes (an emulated fabric's links, or gloo then shared memory), and a holder waiting on an
    idle group longer than the cluster's timeout would fail: measured, a 40-run `validate --shm` on the dev VM lost
    the shared-memory thread of its idle second holder after 300 s of sweeping gloo."""

    rank: int
    holders: Sequence[int]
    every_s: float
    last: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, world, timeout_s: float) -> "KeepAlive":
        """Rank 0 keeping `world`'s holders alive, 4 times per process-group timeout."""
        return cls(0, sorted(set(world.directory.holders)), timeout_s / 4)

    def __call__(self, *_) -> None:
        from qroute.runtime import paths

        if not paths.names() or not paths.world_carries_messages() or time.monotonic() - self.last < self.every_s:
            return
        for group in [None, *paths.groups()]:
            for h in self.holders:
                if h != self.rank:
                    transport.send(h, PING, [0], [], group)
                    if transport.recv(h, group).kind != PONG:
                        raise QrouteError(f"holder {h} answered a keep-alive PING with another kind: expected PONG")
        self.last = time.monotonic()
