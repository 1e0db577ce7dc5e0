"""GPU to GPU through symmetric memory: one-sided writes over NVLink, the header through host memory.

Each instance allocates one inbox on its GPU with `torch.distributed._symmetric_memory`,
`slot` bytes per sender, which every peer maps into its own address space. A message's
GPU tensors travel through it: the sender copies them straight into its slot of the
receiver's inbox (device-to-device copies over NVLink, no CPU and no NCCL call in the
data's way) and sets a flag in the receiver's signal pad (channel DATA); the receiver's
stream waits for that flag, copies the slot into a buffer of its own and sets the
sender's flag (channel FREE), which the sender's stream waits for before it writes the
slot again. Torch's signals are flags (a put sets 1, a wait takes 1 back to 0): the FREE
handshake keeps at most one chunk in a slot, so no put finds its flag still set. Every wait runs on a
stream (a kernel spins on the flag): no CPU waits for the other GPU. A payload larger than
the slot goes in slot-sized chunks, each with its DATA / FREE handshake.

The header (kind, meta, every tensor's dtype and shape, which of them are on the GPU) and
the message's CPU tensors (a route's groups and block ids) go through host shared memory
(`runtime.shm`, which the GPUs of one host share): the receiver's CPU learns what came
without reading GPU memory, and CPU tensors arrive on the CPU (no device round trip to
read a block id). The sender enqueues the GPU side first, then posts the header.

`SymmGroup.open` is a collective on the world group (NCCL, one GPU per instance). The
group stands in for a process group in `transport.send / isend / recv` (`direct`), like
the shared-memory path, and is the instance's only path (`paths.only`: with a receive
pending on the world group, CUDA's lazy loading of a kernel's first launch can hang), so
the holder, the executor, calibration and validation reach a holder over it as over any
path. NVLink multicast stays off (TORCH_SYMM_MEM_DISABLE_MULTICAST=1).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from qroute.errors import QrouteError
from qroute.runtime import transport
from qroute.runtime.shm import ShmGroup

NAME = "nvlink-symm"  # the path's name in profiles
SLOT = 16 << 20  # bytes per sender in each inbox
DATA, FREE = 0, 1  # signal channels: a chunk is in the slot; the slot was read
CTRL = 13  # the kind of the header message on the host path (never seen by the protocol)


def split(tensors: Sequence[Tensor]) -> tuple[int, list[Tensor], list[Tensor]]:
    """(bit mask of the tensors on a GPU, the CPU tensors, the GPU tensors), each list in message order."""
    mask = sum(1 << i for i, t in enumerate(tensors) if t.is_cuda)
    return mask, [t for t in tensors if not t.is_cuda], [t for t in tensors if t.is_cuda]


def join(mask: int, host: Sequence[Tensor], device: Sequence[Tensor]) -> list[Tensor]:
    """The message's tensors in order from the two lists `split` made (`mask` bit i: tensor i came by GPU)."""
    host, device, out = list(host), list(device), []
    for i in range(len(host) + len(device)):
        out.append(device.pop(0) if mask >> i & 1 else host.pop(0))
    return out


def chunks(total: int, slot: int) -> list[tuple[int, int]]:
    """(start, bytes) of each slot-sized chunk of a `total`-byte payload (none for an empty one)."""
    return [(start, min(slot, total - start)) for start in range(0, total, slot)]


def payload_bytes(specs: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> int:
    """Bytes of the tensors `specs` describe, each 8-byte aligned as `transport.unpack` lays them out."""
    total = 0
    for dtype, shape in specs:
        numel = 1
        for d in shape:
            numel *= d
        total += transport.align(numel * dtype.itemsize)
    return total


class SymmGroup:
    """This instance's inbox on its GPU, every peer's inbox mapped, and the host path carrying the headers."""

    direct = True  # transport hands whole messages to it instead of torch.distributed

    def __init__(self, rank: int, world: int, device: torch.device, ctrl: ShmGroup, handle, slot: int,
                 timeout_s: float, inbox: Tensor) -> None:  # fmt: skip
        self.inbox = inbox  # this instance's allocation, kept alive beside its handle
        self.rank, self.world, self.device, self.ctrl, self.handle, self.slot = rank, world, device, ctrl, handle, slot
        self.timeout_ms = int(timeout_s * 1000)
        size = (world * slot,)
        self.boxes = [handle.get_buffer(r, size, torch.uint8) for r in range(world)]  # [world * slot] per owner
        self.written = [0] * world  # chunks written into each peer's slot for us (the first needs no FREE)

    @classmethod
    def open(cls, rank: int, world: int, device: torch.device, timeout_s: float, slot: int = SLOT) -> "SymmGroup":
        """Collective over the world group: the host path for headers, then every GPU's inbox allocated and mapped."""
        import torch.distributed._symmetric_memory as symm_mem

        if device.type != "cuda":
            raise QrouteError(f"the symmetric-memory path on {device}: expected a CUDA device (backend nccl)")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")  # never NVLink multicast
        ctrl = ShmGroup.open(rank, world, timeout_s)
        with torch.cuda.device(device):
            inbox = symm_mem.empty(world * slot, dtype=torch.uint8, device=device)
            handle = symm_mem.rendezvous(inbox, dist.group.WORLD.group_name)
            group = cls(rank, world, device, ctrl, handle, slot, timeout_s, inbox)
        dist.barrier()
        return group

    # ------------------------------------------------------------------ sending

    def send_message(self, dst: int, kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> int:
        """Enqueue the GPU tensors' copies into `dst`'s inbox, then post the header; the payload bytes."""
        header, nbytes = transport.encode_header(kind, meta, tensors)
        mask, host, gpu = split(tensors)
        if gpu:
            with torch.cuda.device(self.device):
                self._put(dst, gpu)
        self.ctrl.send_message(dst, CTRL, [mask], [header, *host])
        return nbytes

    def _put(self, dst: int, tensors: list[Tensor]) -> None:
        total = payload_bytes([(t.dtype, tuple(t.shape)) for t in tensors])
        if not total:  # empty tensors only: nothing to move (the receiver takes no chunk either)
            return
        region = self.boxes[dst][self.rank * self.slot : (self.rank + 1) * self.slot]  # our slot in dst's inbox
        if total <= self.slot:  # one chunk: each tensor straight into the peer's slot (a strided copy each)
            self._claim(dst)
            offset = 0
            for t in tensors:
                size = t.numel() * t.element_size()
                if size:
                    region[offset : offset + size].view(t.dtype).view(t.shape).copy_(t.detach())
                offset += transport.align(size)
            self.handle.put_signal(dst, DATA, self.timeout_ms)
            return
        packed = transport.pack(tensors, total, device=self.device)  # contiguous, then slot by slot
        for start, size in chunks(total, self.slot):
            self._claim(dst)
            region[:size].copy_(packed[start : start + size])
            self.handle.put_signal(dst, DATA, self.timeout_ms)

    def _claim(self, dst: int) -> None:
        """The sender's stream waits until `dst` has read our slot (every chunk but the first ever sent there)."""
        if self.written[dst]:
            self.handle.wait_signal(dst, FREE, self.timeout_ms)
        self.written[dst] += 1

    # ------------------------------------------------------------------ receiving

    def recv_message(self, src: int | None) -> transport.Message:
        """The next message from `src` (or any sender when None); its GPU tensors land on this instance's current
        stream (consumers on that stream see them; a CPU read syncs first)."""
        ctrl = self.ctrl.recv_message(src)
        if ctrl.kind != CTRL:
            raise QrouteError(f"symmetric-memory path: header message of kind {ctrl.kind} from {ctrl.src}: expected {CTRL}")
        header, host = ctrl.tensors[0], ctrl.tensors[1:]
        kind, meta, specs, nbytes = transport.decode_header(header)
        (mask,) = ctrl.meta
        gpu_specs = [s for i, s in enumerate(specs) if mask >> i & 1]
        gpu: list[Tensor] = []
        if gpu_specs:
            with torch.cuda.device(self.device):
                gpu = transport.unpack(self._take(ctrl.src, payload_bytes(gpu_specs)), gpu_specs)
        return transport.Message(kind, ctrl.src, meta, join(mask, host, gpu), nbytes)

    def _take(self, src: int, total: int) -> Tensor:
        """`total` bytes from `src`'s slot of our inbox, chunk by chunk, into a buffer of their own `[total]` uint8."""
        out = torch.empty(total, dtype=torch.uint8, device=self.device)
        slot = self.boxes[self.rank][src * self.slot : (src + 1) * self.slot]
        for start, size in chunks(total, self.slot):
            self.handle.wait_signal(src, DATA, self.timeout_ms)
            out[start : start + size].copy_(slot[:size])
            self.handle.put_signal(src, FREE, self.timeout_ms)
        return out
