"""How the requester reaches a holder: a `Link` posts one message and receives its reply.

`RankLink` is a holder process reached through `transport` over a path's process group
(gloo on loopback, a veth pair, a delay line; NCCL later). `HostLink` (hosttier.py) is an
in-process holder whose blocks live in host memory, reached over PCIe. The executor only
sees the protocol of `holder.py` (ROUTE -> ROUTED, FETCH -> FETCHED), so the same session
code, trace and calibration serve both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from torch import Tensor

from qroute.runtime import transport


class Link(Protocol):
    """One holder as the requester sees it."""

    holder: int

    def isend(self, kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> list:
        """Post one message; the work handles to wait on."""

    def recv(self) -> transport.Message:
        """The holder's next reply."""


@dataclass(frozen=True)
class RankLink:
    """A holder process `holder`, over the process group of one path (None: the world group)."""

    holder: int
    group: object = None

    def isend(self, kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> list:
        return transport.isend(self.holder, kind, meta, tensors, self.group)

    def recv(self) -> transport.Message:
        return transport.recv(self.holder, self.group)


def reply_order(keys):
    """The holders (or (holder, path) keys) of one exchange in the order a requester waits for their replies:
    ascending holder rank, then path name. A holder sends a reply blocking until its requester takes it, so with
    two requesters waiting on two holders in opposite orders, each holder blocked on the requester waiting on the
    other holder (2 of 3 unpinned runs of `bench-agents --instances 4 --requesters 2` on the dev VM hung until the
    process-group timeout). In one order for every requester, the lowest-ranked holder a requester waits on is never
    blocked by it, so some reply always goes through."""
    return sorted(keys, key=lambda k: (k[0], str(k[1])) if isinstance(k, tuple) else (k, ""))
