"""Userspace delay line: copy IP packets between two TUN devices, each one `delay_us` late.

Started by `Fabric` (never by hand) with the two TUN descriptors inherited:

    python -m qroute.fabric.delayline --fds A,B --ready R --delay-us D --owner PID --tag TAG --link NAME

A packet read from A is written to B `delay_us` after it was read, and vice versa. The
delay is the same for every packet, so due times are increasing within a direction and
a FIFO per direction is the heap of pending packets (its head is the earliest due);
the loop sleeps in select() until the next packet is due or a packet arrives.

Lifetime: the forwarder watches its owner through a pidfd in the same select(), so it
exits within one wake-up when the owner dies, however it dies (PR_SET_PDEATHSIG would
fire when the owner's *thread* that started it exits, which a caller may not expect).
Exiting closes the descriptors, which removes both TUN devices.

Limits: one Python loop forwards both directions, about 50-100k packets/s; the TUN
MTU (set by the Fabric) bounds bytes per packet, hence the line's throughput.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys
import time
from collections import deque

READ_BURST = 64  # packets read from one side per wake-up, so one busy side cannot starve the other
QUEUE_LIMIT = 8192  # packets in flight per direction; beyond it, drop like a full queue
MAX_PACKET = 65536
IDLE_WAKE_S = 1.0
PR_SET_TIMERSLACK = 29


class Direction:
    """Packets read from `src` waiting to be written to `dst`: (due time, packet), oldest first."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self.pending: deque[tuple[float, bytes]] = deque()
        self.dropped = 0

    def read(self, due: float) -> None:
        for _ in range(READ_BURST):
            try:
                packet = os.read(self.src, MAX_PACKET)
            except BlockingIOError:
                return
            if len(self.pending) >= QUEUE_LIMIT:
                self.dropped += 1
            else:
                self.pending.append((due, packet))

    def flush(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, packet = self.pending.popleft()
            try:
                os.write(self.dst, packet)
            except OSError:
                self.dropped += 1  # the far device is down or its backlog is full: the wire drops it

    def next_due(self) -> float | None:
        return self.pending[0][0] if self.pending else None


def wait_s(directions: list[Direction], now: float) -> float:
    dues = [d for x in directions if (d := x.next_due()) is not None]
    return max(0.0, min(dues) - now) if dues else IDLE_WAKE_S


def forward(fd_a: int, fd_b: int, delay_s: float, owner_fd: int, owner_pid: int) -> None:
    """Run the delay line until the owner dies (or a signal ends the process)."""
    directions = [Direction(fd_a, fd_b), Direction(fd_b, fd_a)]
    watched = [fd_a, fd_b, owner_fd]
    while True:
        now = time.monotonic()
        for d in directions:
            d.flush(now)
        ready, _, _ = select.select(watched, [], [], wait_s(directions, now))
        if owner_fd in ready or os.getppid() != owner_pid:
            return
        arrived = time.monotonic()
        for d in directions:
            if d.src in ready:
                d.read(arrived + delay_s)


def precise_timers() -> None:
    """Ask for 1 ns timer slack (default 50 us) so select() wakes when asked, not up to 50 us later."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qroute.fabric.delayline", description=__doc__.splitlines()[0])
    p.add_argument("--fds", required=True, help="A,B: the two inherited TUN descriptors")
    p.add_argument("--ready", type=int, help="inherited pipe descriptor: write one byte once forwarding")
    p.add_argument("--delay-us", type=float, required=True)
    p.add_argument("--owner", type=int, required=True, help="pid of the Fabric's process; exit when it dies")
    p.add_argument("--tag", required=True, help="fabric tag (lets leftovers() find this process)")
    p.add_argument("--link", required=True, help="link name (for ps)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    fd_a, fd_b = (int(x) for x in args.fds.split(","))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the owner's terminal is the owner's to handle
    try:
        owner_fd = os.pidfd_open(args.owner)
    except ProcessLookupError:
        return 0
    if os.getppid() != args.owner:
        return 0  # the owner died before we watched it
    for fd in (fd_a, fd_b):
        os.set_blocking(fd, False)
    precise_timers()
    if args.ready is not None:
        os.write(args.ready, b"1")
        os.close(args.ready)
    forward(fd_a, fd_b, args.delay_us * 1e-6, owner_fd, args.owner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
