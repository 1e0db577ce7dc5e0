"""The simulator's servers: holders' compute and ports, as fluid FIFO servers of trains and block reservations."""

from __future__ import annotations

from typing import Sequence


class Resources:
    """Holders' compute (ids = instances) and ports (id `N + instance * P + path`): trains and reservations."""

    def __init__(self, caps: Sequence[int]) -> None:
        n = len(caps)
        self.cap = list(caps)
        self.work = [0.0] * n  # S: per-round seconds of the trains running on it
        self.util = [0.0] * n  # U: busy fraction the trains running on it take
        self.free_at = [0.0] * n  # end of its last block transfer
        self.busy = [0.0] * n  # seconds of service, over the run

    def period(self, r: int, work: float, own: float) -> float:
        """Per-layer period of a train needing `work` s of `r` per layer, with uncontended period `own`."""
        cap, util = self.cap[r], max(self.util[r], 0.0)
        if util + work / own <= cap:
            return own
        p = (max(self.work[r], 0.0) + work) / cap
        if util < cap:
            p = min(p, work / (cap - util))
        return max(own, p)

    def reserve(self, ids: Sequence[int], ready: float, seconds: float) -> float:
        """A block transfer of `seconds` through every resource in `ids`, FIFO after `ready`; its end."""
        start = max(ready, *(self.free_at[i] for i in ids))
        end = start + seconds
        for i in ids:
            self.free_at[i] = end
            self.busy[i] += seconds
        return end
