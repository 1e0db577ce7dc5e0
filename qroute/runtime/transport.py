"""Framed messages between instances over torch.distributed point-to-point.

A message is a fixed-size int64 header (kind, small integer metadata, and the dtype and
shape of each tensor) followed by one byte buffer holding every tensor back to back,
8-byte aligned. Tensors of any dtype travel as bytes.

Eager protocol: a message up to EAGER bytes (header included) travels as ONE send, which
the receiver takes into an EAGER-sized buffer (gloo accepts a shorter message); on loopback
that halves a round trip against a separate header and payload (measured here: 0.15 ms vs
0.4 ms). Larger messages send the header first, flagged, then the payload with tag PAYLOAD.
Messages are received from a given sender or from any (holders serve several requesters).

Exact framing (NCCL, or `set_exact(True)` to exercise it over gloo): a receive must name its
sender and post exactly the size that was sent, and buffers live on this instance's device
(`set_exact`). Every message then starts with a first frame of a fixed size (`first`, default
FIRST bytes): the header, and the payload too when it fits (inline); a larger payload follows
as a second frame. One NCCL operation per small message instead of two; the padding costs
nothing measurable (NCCL round trips of 1 KB and 72 KB took the same 111-128 us over NVLink). A holder serving several requesters posts one first-frame
receive per requester and polls them (`Poller`), since NCCL cannot receive from any sender.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from qroute.errors import QrouteError

HEADER_LEN = 96
HEADER_BYTES = HEADER_LEN * 8
EAGER = 1 << 20
MAGIC = 0x51524F55  # "QROU"
HEADER, PAYLOAD = 11, 12
INLINE_WORD = 4  # header word: 1 when the payload follows in the same send
MAX_META = 24
MAX_TENSORS = 8
MAX_DIMS = 6
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool, torch.float64)
_CODE = {d: i for i, d in enumerate(DTYPES)}


@dataclass
class Message:
    """`kind` (an int the protocol defines), its sender, integer `meta` and tensors."""

    kind: int
    src: int = -1
    meta: list[int] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    nbytes: int = 0  # payload bytes on the wire


FIRST = 64 << 10  # exact framing: the first frame's size (header and, when it fits, the payload)
_MODE = {"exact": False, "device": torch.device("cpu"), "first": FIRST}


def set_exact(exact: bool, device: torch.device | str = "cpu", first: int = FIRST) -> None:
    """This process's framing: exact (a first frame of `first` bytes holding the header and any payload that fits,
    then the rest of the payload, from a named sender; buffers on `device`; every instance must use the same
    `first`) or eager (gloo: one send up to EAGER bytes, receives from any sender; buffers on the CPU).
    `first=HEADER_BYTES` sends every payload as a frame of its own."""
    if not isinstance(first, int) or first < HEADER_BYTES or first % 8:
        raise QrouteError(f"first frame of {first!r} bytes: expected a multiple of 8, at least {HEADER_BYTES}")
    _MODE.update(exact=bool(exact), device=torch.device(device), first=first)


def exact() -> bool:
    return _MODE["exact"]


def device() -> torch.device:
    """Where this instance's messages live: its GPU under NCCL, else the CPU."""
    return _MODE["device"]


def align(n: int) -> int:
    """`n` bytes rounded up to the 8-byte boundary each tensor of a message starts at."""
    return (n + 7) // 8 * 8


def encode_header(kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> tuple[Tensor, int]:
    """int64 header `[HEADER_LEN]` and the payload size in bytes."""
    if len(meta) > MAX_META or len(tensors) > MAX_TENSORS:
        raise QrouteError(f"message with {len(meta)} meta / {len(tensors)} tensors: expected <= {MAX_META} / {MAX_TENSORS}")
    words = [MAGIC, kind, len(meta), len(tensors), 0, 0, *meta]
    nbytes = 0
    for t in tensors:
        if t.dim() > MAX_DIMS or t.dtype not in _CODE:
            raise QrouteError(f"tensor {tuple(t.shape)} {t.dtype}: expected <= {MAX_DIMS} dims of a supported dtype")
        words += [_CODE[t.dtype], t.dim(), *t.shape]
        nbytes += align(t.numel() * t.element_size())
    words[5] = nbytes
    words[INLINE_WORD] = int(HEADER_BYTES + nbytes <= (_MODE["first"] if _MODE["exact"] else EAGER))
    header = np.zeros(HEADER_LEN, dtype=np.int64)  # numpy: a few us less than torch ops per message
    header[: len(words)] = words
    return torch.from_numpy(header), nbytes


def decode_header(header: Tensor) -> tuple[int, list[int], list[tuple[torch.dtype, tuple[int, ...]]], int]:
    """(kind, meta, [(dtype, shape)], payload bytes) from a received header."""
    return _decode(header.tolist())


def _decode(w: list[int]) -> tuple[int, list[int], list[tuple[torch.dtype, tuple[int, ...]]], int]:
    if w[0] != MAGIC:
        raise QrouteError(f"bad message header magic {w[0]:#x}: expected {MAGIC:#x}")
    kind, n_meta, n_tensors, nbytes = w[1], w[2], w[3], w[5]
    meta, pos, specs = w[6 : 6 + n_meta], 6 + n_meta, []
    for _ in range(n_tensors):
        dtype, ndim = DTYPES[w[pos]], w[pos + 1]
        specs.append((dtype, tuple(w[pos + 2 : pos + 2 + ndim])))
        pos += 2 + ndim
    return kind, meta, specs, nbytes


def pack(tensors: Sequence[Tensor], nbytes: int, header: Tensor | None = None, device: torch.device | None = None,
         size: int = 0) -> Tensor:  # fmt: skip
    """One uint8 buffer (on `device`, default the CPU; at least `size` bytes) holding (the header and) every tensor,
    each at an 8-byte aligned offset. A buffer for a GPU whose tensors are all on the CPU is staged on the host and
    copied once."""
    start = 0 if header is None else HEADER_BYTES
    used = start + nbytes
    buf = torch.empty(max(size, used), dtype=torch.uint8, device=device)
    on_host = all(t.device.type == "cpu" for t in tensors)
    if buf.device.type != "cpu" and on_host:
        buf[:used].copy_(pack(tensors, nbytes, header))
        return buf
    if on_host:  # a host buffer from host tensors: byte copies, no tensor views (a few us less per tensor)
        write_host(buf.data_ptr(), tensors, header)
        return buf
    if header is not None:
        buf[:HEADER_BYTES] = header.view(torch.uint8)
    offset = start
    for t in tensors:
        size = t.numel() * t.element_size()
        if (t.device == buf.device or t.device.type == "cpu") and t.numel():  # one strided copy into the buffer
            buf[offset : offset + size].view(t.dtype).view(t.shape).copy_(t.detach())
        else:
            buf[offset : offset + size] = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        offset += align(size)
    return buf


def write_host(at: int, tensors: Sequence[Tensor], header: Tensor | None = None) -> None:
    """Copy (the header and) every tensor, all in host memory, to host address `at`, each at the 8-byte aligned
    offset `unpack` reads it from. The caller owns at least HEADER_BYTES (with a header) + the payload bytes there."""
    offset = 0
    if header is not None:
        ctypes.memmove(at, header.data_ptr(), HEADER_BYTES)
        offset = HEADER_BYTES
    for t in tensors:
        size = t.numel() * t.element_size()
        if size:
            src = t.detach() if t.is_contiguous() else t.detach().contiguous()
            ctypes.memmove(at + offset, src.data_ptr(), size)
        offset += align(size)


def unpack(buf: Tensor, specs: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> list[Tensor]:
    """Views of the tensors in a payload buffer (no copies)."""
    out, offset = [], 0
    for dtype, shape in specs:
        numel = 1
        for d in shape:
            numel *= d
        size = numel * dtype.itemsize
        out.append(buf[offset : offset + size].view(dtype).reshape(shape))
        offset += align(size)
    return out


def _frames(kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> tuple[list[tuple[Tensor, int]], int]:
    """The buffers to send, with their tags: one (eager: up to EAGER bytes; exact: `first` bytes, on this instance's
    device) or header then payload."""
    header, nbytes = encode_header(kind, meta, tensors)
    if _MODE["exact"]:
        device, first = _MODE["device"], _MODE["first"]
        if HEADER_BYTES + nbytes <= first:
            return [(pack(tensors, nbytes, header, device, first), HEADER)], nbytes
        return [(pack((), 0, header, device, first), HEADER), (pack(tensors, nbytes, device=device), PAYLOAD)], nbytes
    if HEADER_BYTES + nbytes <= EAGER:
        return [(pack(tensors, nbytes, header), HEADER)], nbytes
    return [(header.view(torch.uint8), HEADER), (pack(tensors, nbytes), PAYLOAD)], nbytes


def _direct(group) -> bool:
    """A path that moves whole messages itself (`runtime.shm`) rather than a torch.distributed process group."""
    return getattr(group, "direct", False)


def send(dst: int, kind: int, meta: Sequence[int] = (), tensors: Sequence[Tensor] = (), group=None) -> int:
    """Send one message to `dst` (blocking) over `group` (a path's process group; default: the world); returns the payload bytes."""
    if _direct(group):
        return group.send_message(dst, kind, meta, tensors)
    frames, nbytes = _frames(kind, meta, tensors)
    for buf, tag in frames:
        dist.send(buf, dst, group=group, tag=tag)
    return nbytes


def isend(dst: int, kind: int, meta: Sequence[int] = (), tensors: Sequence[Tensor] = (), group=None) -> list:
    """Post one message to `dst` without waiting; returns the work handles to wait on."""
    if _direct(group):  # copied out before this returns: nothing to wait on
        group.send_message(dst, kind, meta, tensors)
        return []
    frames, _ = _frames(kind, meta, tensors)
    works = [dist.isend(buf, dst, group=group, tag=tag) for buf, tag in frames]
    works.append(_Keep(*[buf for buf, _ in frames]))  # keep the buffers alive until waited on
    return works


class _Keep:
    def __init__(self, *refs) -> None:
        self.refs = refs

    def wait(self) -> None:
        return None


def recv(src: int | None = None, group=None) -> Message:
    """Receive one message from `src`, or from any instance when `src` is None (eager framing only), over `group`."""
    if _direct(group):
        return group.recv_message(src)
    if _MODE["exact"]:
        if src is None:
            raise QrouteError("a receive from any sender under exact framing (NCCL): expected a named sender (see Poller)")
        frame = _first_frame()
        dist.recv(frame, src, group=group, tag=HEADER)
        return _payload(frame, src, group)
    first = torch.empty(EAGER, dtype=torch.uint8)
    sender = dist.recv(first, src, group=group, tag=HEADER)
    header = first[:HEADER_BYTES].view(torch.int64)
    kind, meta, specs, nbytes = decode_header(header)
    if not nbytes:
        return Message(kind, sender, meta, [], 0)
    if int(header[INLINE_WORD]):
        buf = first[HEADER_BYTES : HEADER_BYTES + nbytes]
    else:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        dist.recv(buf, sender, group=group, tag=PAYLOAD)
    return Message(kind, sender, meta, unpack(buf, specs), nbytes)


def _first_frame() -> Tensor:
    return torch.empty(_MODE["first"], dtype=torch.uint8, device=_MODE["device"])


def _payload(frame: Tensor, src: int, group) -> Message:
    """The message whose exact first frame came from `src`: its inline payload, or the payload frame that follows."""
    words = frame[:HEADER_BYTES].view(torch.int64).tolist()  # the header, back on the host (waits for the frame)
    kind, meta, specs, nbytes = _decode(words)
    if not nbytes:
        return Message(kind, src, meta, [], 0)
    if words[INLINE_WORD]:
        buf = frame[HEADER_BYTES : HEADER_BYTES + nbytes]
    else:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=_MODE["device"])
        dist.recv(buf, src, group=group, tag=PAYLOAD)
    return Message(kind, src, meta, unpack(buf, specs), nbytes)


class Poller:
    """The next message from any of `sources` under exact framing. NCCL cannot receive from any sender: a first-frame
    receive is posted per source and the posted ones are polled in turn (after a message from a source, its next
    frame receive is posted only when `recv` is called again, so the reply to it goes out first). Gloo's receives
    complete only when waited on, so there the first frame is one receive from any sender. `post(frame, src)` (tests)
    replaces `dist.irecv` (it fills the frame)."""

    def __init__(self, sources: Sequence[int], group=None, post=None) -> None:
        self.sources, self.group = list(sources), group
        self.anysource = post is None and (_direct(group) or dist.get_backend(group) != "nccl")
        self.post = post or (lambda frame, src: dist.irecv(frame, src, group=group, tag=HEADER))
        self.posted: dict[int, tuple[Tensor, object]] = {}
        self.turn = 0

    def recv(self) -> Message:
        if self.anysource and _direct(self.group):
            return self.group.recv_message(None)
        if self.anysource:
            frame = _first_frame()
            src = dist.recv(frame, None, group=self.group, tag=HEADER)
            return _payload(frame, src, self.group)
        for src in self.sources:
            if src not in self.posted:
                frame = _first_frame()
                self.posted[src] = (frame, self.post(frame, src))
        t0 = time.perf_counter()
        while True:
            for i in range(len(self.sources)):
                src = self.sources[(self.turn + i) % len(self.sources)]
                frame, work = self.posted[src]
                if work.is_completed():
                    work.wait()
                    del self.posted[src]
                    self.turn = (self.turn + i + 1) % len(self.sources)  # round robin: no requester starves
                    return _payload(frame, src, self.group)
            _pause(time.perf_counter() - t0)

    def drop(self, src: int) -> None:
        """`src` sends nothing more (it stopped): post no further receive for it."""
        self.sources.remove(src)
        self.turn = 0


SPIN_S, POLL_S = 1e-3, 20e-6  # look again at once (yielding the core) this long, then sleep this long between looks


def _pause(waited: float) -> None:
    """Between two looks at the posted receives: yield the core for the first SPIN_S of a wait, then sleep. A sleep
    of POLL_S lasts the kernel's timer slack too (74 us on a 4-H200 host): a request that comes within microseconds
    would wait that out. There a framed 1-row round trip took 208-230 us looking again at once against 354-358 us
    sleeping between looks (two runs of `benchmarks.framing_steps`: `benchmarks/results/framing-steps-h200-x4-*`)."""
    if waited <= SPIN_S:
        os.sched_yield()
    else:
        time.sleep(POLL_S)


def wait_all(works: Sequence) -> None:
    for w in works:
        w.wait()
