"""The host-memory tier: a holder whose blocks live in pinned host memory, beside the requester's GPU.

On a one-GPU machine this is a real PCIe path between two instances of the cluster: the
requester (the model, on the GPU) and a holder (blocks in pinned host memory, computed on by
the host CPUs), both in one process. `HostLink` answers the holder protocol (`holder.py`) in
process, so the executor, its trace and `qroute calibrate` / `qroute validate` treat it like
any holder:

ROUTE  the rows are copied to the host (D2H), the host CPUs attend the blocks there
       (`route_states`, torch), the states are copied back (H2D).
FETCH  the selected blocks are copied to the GPU (H2D): a contiguous run straight from the
       pinned store, a scattered selection gathered on the host into a pinned buffer first
       (the gather, reported as the holder's compute).
Each reply carries the holder's compute time in `meta[0]`, as a holder process does, so the
executor's accounting (network = round trip - holder compute) prices PCIe as the path and
the host CPUs as the holder's compute.

Without a GPU the requester runs on the CPU and the copies are plain memory copies (path
`host-memcpy`): how CI checks the tier's exactness.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from qroute.errors import QrouteError
from qroute.runtime import transport
from qroute.runtime.holder import FETCH, FETCHED, ROUTE, ROUTED, STOP, AttentionSpec, ServeStats, build_store, route_states
from qroute.runtime.store import BlockStore
from qroute.runtime.world import World, WorldSpec, build_world

PCIE = "pcie"  # the path's name in profiles: requester on a GPU, holder in pinned host memory
HOST_MEMCPY = "host-memcpy"  # the same tier without a GPU (requester on the CPU)
HOST_HOLDER = 1  # the host holder's instance id (the requester is 0)


def path_name(device: torch.device) -> str:
    """The tier's path name for a requester on `device`."""
    return PCIE if device.type == "cuda" else HOST_MEMCPY


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): timings read after it are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HostLink:
    """The host holder as a `Link`: serves each posted message at once, in process; `recv` returns its reply."""

    def __init__(self, store: BlockStore, spec: AttentionSpec, device: torch.device, holder: int = HOST_HOLDER) -> None:
        self.holder, self.store, self.spec, self.device = holder, store, spec, torch.device(device)
        self.stats = ServeStats()
        self._replies: deque[transport.Message] = deque()

    def isend(self, kind: int, meta: Sequence[int], tensors: Sequence[Tensor]) -> list:
        if kind == ROUTE:
            self._replies.append(self._route(list(meta), tensors))
        elif kind == FETCH:
            self._replies.append(self._fetch(tensors))
        elif kind != STOP:
            raise QrouteError(f"host holder got message kind {kind}: expected ROUTE ({ROUTE}), FETCH ({FETCH}) or STOP")
        return []

    def recv(self) -> transport.Message:
        if not self._replies:
            raise QrouteError("host holder: recv with no message posted: expected isend first")
        return self._replies.popleft()

    def _route(self, meta: list[int], tensors: Sequence[Tensor]) -> transport.Message:
        """q [n, H, D], groups [G, 4], blocks -> ROUTED (o [n, H, latent], lse [n, H]) on the requester's device."""
        q, groups, blocks = (t.to("cpu") for t in tensors)  # D2H (waits for the rows)
        t0 = time.perf_counter()
        state = route_states(self.store, self.spec, meta[0], q, groups, blocks)
        elapsed = time.perf_counter() - t0
        self.stats.routed_rows += q.shape[0] * q.shape[1]
        self.stats.route_messages += 1
        busy = self.stats.busy(elapsed)
        reply = self._to_device([state.o, state.lse])
        return transport.Message(ROUTED, self.holder, [int(elapsed * 1e9), busy], reply, _nbytes(reply))

    def _fetch(self, tensors: Sequence[Tensor]) -> transport.Message:
        """blocks [n] -> FETCHED kv [L, n * block_size, D] on the requester's device."""
        blocks = tensors[0].to("cpu")
        t0 = time.perf_counter()
        kv = self.store.gather(blocks, pinned=self.device.type == "cuda")
        elapsed = time.perf_counter() - t0
        self.stats.fetched_blocks += blocks.numel()
        busy = self.stats.busy(elapsed)
        reply = self._to_device([kv])
        return transport.Message(FETCHED, self.holder, [int(elapsed * 1e9), busy], reply, _nbytes(reply))

    def _to_device(self, tensors: list[Tensor]) -> list[Tensor]:
        """Copies on the requester's device (H2D from pinned memory; a plain copy on the CPU), waited for.

        A contiguous run of the store is a view `[L, T, D]` whose layer slices are contiguous but not the whole:
        it goes as one copy per layer straight from the pinned store (torch would first stage the whole view in
        pageable memory)."""
        out = [_copy_to(t, self.device) for t in tensors]
        sync(self.device)
        return out


def _copy_to(t: Tensor, device: torch.device) -> Tensor:
    if t.is_contiguous() or t.dim() < 2 or not t[0].is_contiguous():
        return t.to(device, non_blocking=True, copy=True)
    out = torch.empty(t.shape, dtype=t.dtype, device=device)
    for i in range(t.shape[0]):
        out[i].copy_(t[i], non_blocking=True)
    return out


def _nbytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class HostTier:
    """A one-process cluster: the requester's world (model on `device`) and the host holder's link."""

    world: World
    link: HostLink
    device: torch.device

    @property
    def path(self) -> str:
        return path_name(self.device)

    @property
    def links(self) -> dict[int, HostLink]:
        return {self.link.holder: self.link}


def build_host_tier(spec: WorldSpec, device: str | torch.device = "auto") -> HostTier:
    """Every block of the corpus on the host holder (pinned when a GPU is present), the model on `device`.

    `device`: "auto" (the GPU when there is one), "cpu", "cuda" or "cuda:N"; an error names a GPU that is not there.
    """
    device = resolve_device(device)
    world = build_world(spec, [HOST_HOLDER])
    world.model.to(device)
    store = build_store(HOST_HOLDER, world.corpus, world.directory, world.model, device="cpu")  # host memory
    if device.type == "cuda":
        store.pin()
    return HostTier(world, HostLink(store, AttentionSpec.of(world.model), device), device)


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> the GPU when there is one, else the CPU; a named GPU must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise QrouteError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if d.type == "cuda" and not (torch.cuda.is_available() and (d.index or 0) < torch.cuda.device_count()):
        raise QrouteError(f"device {device!r}: no such GPU here ({torch.cuda.device_count()} visible): expected 'cpu' or 'auto'")
    if d.type not in ("cpu", "cuda"):
        raise QrouteError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return d
