"""Shared memory between the instances of one host: a path that skips the network stack.

Each instance owns an inbox in shared memory with one slot per sender: two counters (chunks
the sender wrote, chunks the owner consumed) and `slot` bytes. A message is the transport's
header and payload, cut into slot-sized chunks: the sender waits until its slot is free
(consumed == written), copies a chunk in and then bumps `written`; the owner waits until
`written` moves, copies the chunk out and bumps `consumed`. The counters are aligned 8-byte
words written by one side each; on x86 (total store order) a reader that sees `written`
move also sees the chunk stored before it. A message ends in a fresh buffer of its own, so
the slot is free as soon as it is read. Each instance also owns a doorbell (a named pipe):
whoever moves a counter rings the other side's, and a waiter sleeps in `select` on its own
until it rings (re-checking the counters: a ring may be for another slot), so an idle
instance takes no CPU and a woken one does not wait out a sleep quantum.
A waiter first looks for a while (`spin_window`: 5 ms where the host gives every instance 2
cores, else 300 us), so that within a decode step it is rarely put to sleep and woken.

`ShmGroup.open` is a collective on the world group: rank 0 names the inboxes, every
instance creates its own inbox and doorbell, opens all of them, and unlinks its own once
all are open, so nothing is left in /dev/shm whatever happens to the processes later. The
group stands in for a process group in `transport.send / isend / recv` (`direct`), so the
holder, the executor, calibration and validation reach a holder over it as over any path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import select
import tempfile
import time
import uuid
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from qroute.errors import QrouteError

NAME = "shm"  # the path's name in profiles
SLOT = 1 << 20  # bytes per sender and receiver
CTRL = 64  # bytes before each slot's data: WRITTEN and CONSUMED, then padding to a cache line
WRITTEN, CONSUMED = 0, 1
SPIN_S, NAP_S = 300e-6, 0.05  # look (yielding the core) this long, then sleep on the doorbell (waking at least this often)
SPARE_SPIN_S = 5e-3  # the look where the host has cores to spare (`spin_window`): a reply or the next layer's exchange
# comes within it, so a waiting instance is never put to sleep and woken inside a decode step


def spin_window(cores: int, world: int, per: int = 2) -> float:
    """How long an instance looks for a message before it sleeps on its doorbell: `SPARE_SPIN_S` where the host's
    `cores` give every one of the `world` instances `per` cores or more (`launcher.cpu_set` pins each to a share of
    its own), else `SPIN_S`, so that on a host of fewer cores a waiting instance does not take a core another
    instance computes on. Measured on an H200 host's 16 cores (3 instances, 5 cores each; `calibrate --quick --shm`
    in turns, 2026-11-28): shm's route exchanges in situ took 0.46-0.55 ms against 0.72-0.80 ms at their smallest
    size (alpha 448-564 against 725-752 us; gloo over loopback, the control, 658-893 against 867-1,031 us). On the dev
    VM's 2 cores (one core per holder; `spin_window` keeps `SPIN_S` there) a 5 ms look made validated shm routes 6%
    faster and gloo's, the control, 3-10% slower: no clear gain."""
    return SPARE_SPIN_S if cores // max(1, world) >= per else SPIN_S


def _dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class ShmGroup:
    """This instance's view of every inbox: `send_message` into a peer's slot for us, `recv_message` from ours."""

    direct = True  # transport hands whole messages to it instead of torch.distributed

    def __init__(self, rank: int, world: int, boxes: list[Tensor], bells: list[int], slot: int, timeout_s: float,
                 spin_s: float = SPIN_S) -> None:  # fmt: skip
        self.rank, self.world, self.slot, self.timeout_s, self.bells = rank, world, slot, timeout_s, bells
        self.spin_s = spin_s  # how long `_wait` looks before it sleeps on the doorbell (`spin_window`)
        self.ctrl = [b[:, :CTRL].view(torch.int64).numpy() for b in boxes]  # [world, CTRL / 8] per owner; numpy: fast
        self.data = [b[:, CTRL:] for b in boxes]  # [world, slot] per owner
        self.base = [b.data_ptr() + CTRL for b in boxes]  # address of each owner's first slot's data
        self.boxes = boxes  # keep the mappings alive beside the addresses
        self.written = [0] * world  # chunks this instance wrote into each peer's slot for it
        self.consumed = [0] * world  # chunks this instance read from each sender's slot
        self.turn = 0

    @classmethod
    def open(cls, rank: int, world: int, timeout_s: float, slot: int = SLOT, spin_s: float = SPIN_S) -> "ShmGroup":
        """Collective over the world group: every instance's inbox created, mapped by all, and unlinked; `spin_s`: how
        long a wait looks before it sleeps (`spin_window`)."""
        if platform.machine().lower() not in ("x86_64", "amd64"):
            raise QrouteError(f"the shared-memory path on {platform.machine()}: expected x86-64 (its counters rely on "
                              "x86's store order)")  # fmt: skip
        name = [uuid.uuid4().hex if rank == 0 else None]
        dist.broadcast_object_list(name, src=0)
        paths = [os.path.join(_dir(), f"qroute-{name[0]}-{r}") for r in range(world)]
        size, own = world * (CTRL + slot), paths[rank]
        try:
            with open(own, "wb") as f:
                f.truncate(size)  # zeros: every counter starts at 0
            os.mkfifo(own + ".bell")
            dist.barrier()
            boxes = [torch.from_file(p, shared=True, size=size, dtype=torch.uint8).view(world, CTRL + slot) for p in paths]
            bells = [os.open(p + ".bell", os.O_RDWR | os.O_NONBLOCK) for p in paths]  # O_RDWR: never blocks on a FIFO
            dist.barrier()
        finally:
            for f in (own, own + ".bell"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
        return cls(rank, world, boxes, bells, slot, timeout_s, spin_s)

    # ------------------------------------------------------------------ sending

    def send_message(self, dst: int, kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> int:
        """Copy one message into `dst`'s slot for this instance, chunk by chunk; the payload bytes."""
        from qroute.runtime import transport

        header, nbytes = transport.encode_header(kind, meta, tensors)
        ctrl, data = self.ctrl[dst][self.rank], self.data[dst][self.rank]
        if transport.HEADER_BYTES + nbytes <= self.slot and all(t.device.type == "cpu" for t in tensors):
            self._wait(lambda: int(ctrl[CONSUMED]) == self.written[dst], f"instance {dst} to read its slot")
            transport.write_host(self.base[dst] + self.rank * (CTRL + self.slot), tensors, header)  # straight into the slot
            self.written[dst] += 1
            ctrl[WRITTEN] = self.written[dst]  # after the message: the reader sees both or neither
            self._ring(dst)
            return nbytes
        buf = transport.pack(tensors, nbytes, header)  # [header | payload] on the CPU
        for start in range(0, buf.numel(), self.slot):
            self._wait(lambda: int(ctrl[CONSUMED]) == self.written[dst], f"instance {dst} to read its slot")
            chunk = buf[start : start + self.slot]
            data[: chunk.numel()].copy_(chunk)
            self.written[dst] += 1
            ctrl[WRITTEN] = self.written[dst]  # after the chunk: the reader sees both or neither
            self._ring(dst)
        return nbytes

    # ------------------------------------------------------------------ receiving

    def recv_message(self, src: int | None):
        """The next message from `src`, or from whichever sender's comes first (round robin) when None."""
        from qroute.runtime import transport

        src = self._ready(src)
        first = self.data[self.rank][src]
        kind, meta, specs, nbytes = transport.decode_header(first[: transport.HEADER_BYTES].view(torch.int64))
        if transport.HEADER_BYTES + nbytes <= self.slot:  # one slot: each tensor copied out into its own storage
            at, tensors = self.base[self.rank] + src * (CTRL + self.slot) + transport.HEADER_BYTES, []
            for dtype, shape in specs:
                t = torch.empty(shape, dtype=dtype)
                size = t.numel() * t.element_size()
                if size:
                    ctypes.memmove(t.data_ptr(), at, size)
                tensors.append(t)
                at += transport.align(size)
            self._consume(src)
            return transport.Message(kind, src, meta, tensors, nbytes)
        out = torch.empty(nbytes, dtype=torch.uint8)
        got = min(nbytes, self.slot - transport.HEADER_BYTES)
        out[:got].copy_(first[transport.HEADER_BYTES : transport.HEADER_BYTES + got])
        self._consume(src)
        while got < nbytes:
            self._ready(src)
            n = min(nbytes - got, self.slot)
            out[got : got + n].copy_(self.data[self.rank][src][:n])
            self._consume(src)
            got += n
        return transport.Message(kind, src, meta, transport.unpack(out, specs), nbytes)

    def _ready(self, src: int | None) -> int:
        """Wait for an unread chunk from `src` (or any sender); its sender."""
        ctrl = self.ctrl[self.rank]
        if src is not None:
            self._wait(lambda: int(ctrl[src, WRITTEN]) > self.consumed[src], f"a message from instance {src}")
            return src
        found: list[int] = []

        def any_sender() -> bool:
            for i in range(self.world):
                s = (self.turn + i) % self.world
                if s != self.rank and int(ctrl[s, WRITTEN]) > self.consumed[s]:
                    found.append(s)
                    self.turn = (s + 1) % self.world  # round robin: no sender starves
                    return True
            return False

        self._wait(any_sender, "a message from any instance")
        return found[0]

    def _consume(self, src: int) -> None:
        self.consumed[src] += 1
        self.ctrl[self.rank][src, CONSUMED] = self.consumed[src]
        self._ring(src)  # its slot is free again

    def _ring(self, peer: int) -> None:
        try:
            os.write(self.bells[peer], b"\0")
        except BlockingIOError:  # the pipe is full of rings already: it will wake up
            pass

    def _wait(self, ready, what: str) -> None:
        """Return once `ready()`: look again and again for `spin_s` (yielding the core between looks), then sleep on
        this instance's doorbell; a clear error once the cluster timeout has passed. Measured on 2 cores, 3 instances: a
        round trip of 8 B took 100-116 us looking for 2 ms and 190-250 us sleeping after 20 us."""
        t0 = time.perf_counter()
        bell = self.bells[self.rank]
        while not ready():
            waited = time.perf_counter() - t0
            if waited > self.timeout_s:
                raise QrouteError(f"shared-memory path: waited {waited:.0f} s for {what}: expected it within "
                                  f"the cluster timeout ({self.timeout_s:.0f} s)")  # fmt: skip
            if waited <= self.spin_s:
                os.sched_yield()  # a reply often comes within microseconds: look again, but let others run
            else:
                select.select([bell], [], [], NAP_S)
                try:
                    os.read(bell, 4096)  # drain: the counters say what the rings were for
                except OSError as exc:
                    if exc.errno != errno.EAGAIN:
                        raise
