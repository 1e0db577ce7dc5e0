"""Where blocks live: placement over holders, the directory, and each holder's paged block store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from qroute.errors import QrouteError, non_negative_int
from qroute.workload.corpus import Corpus

PLACEMENTS = ("contiguous", "hashed")


@dataclass(frozen=True)
class Placement:
    """`contiguous`: whole chunks on one holder, balanced by blocks; `hashed`: each block by a hash of its id.
    `replicas`: extra copies on the next holders."""

    kind: str = "contiguous"
    replicas: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PLACEMENTS:
            raise QrouteError(f"placement {self.kind!r}: expected one of {', '.join(PLACEMENTS)}")
        non_negative_int("replicas", self.replicas)


@dataclass(frozen=True)
class Directory:
    """Block id -> holders (primary first), for every block of the corpus."""

    holders_of_block: tuple[tuple[int, ...], ...]
    holders: tuple[int, ...]

    def holders_of(self, block: int) -> tuple[int, ...]:
        if not 0 <= block < len(self.holders_of_block):
            raise QrouteError(f"block id {block} out of range: expected 0 <= id < {len(self.holders_of_block)}")
        return self.holders_of_block[block]

    def primary(self, block: int) -> int:
        return self.holders_of(block)[0]

    def blocks_on(self, holder: int) -> list[int]:
        return [b for b, hs in enumerate(self.holders_of_block) if holder in hs]

    def by_holder(self, blocks: Sequence[int]) -> dict[int, list[int]]:
        """Selected blocks grouped by their primary holder, in selection order."""
        out: dict[int, list[int]] = {}
        for b in blocks:
            out.setdefault(self.primary(b), []).append(b)
        return out


def _stable_hash(block: int) -> int:
    return int.from_bytes(hashlib.blake2b(block.to_bytes(8, "little"), digest_size=8).digest(), "little")


def place(corpus: Corpus, holders: Sequence[int], placement: Placement) -> Directory:
    """Assign every block of `corpus` to holders."""
    holders = tuple(holders)
    if not holders:
        raise QrouteError("no holders: expected at least one holder rank")
    if placement.replicas >= len(holders):
        raise QrouteError(f"replicas={placement.replicas}: expected < holders={len(holders)}")
    primary = _contiguous(corpus, len(holders)) if placement.kind == "contiguous" else _hashed(corpus, len(holders))
    copies = tuple(
        tuple(holders[(p + r) % len(holders)] for r in range(placement.replicas + 1)) for p in primary
    )
    return Directory(copies, holders)


def _contiguous(corpus: Corpus, n: int) -> list[int]:
    """Holder index per block: whole chunks, in order, about `num_blocks / n` blocks per holder."""
    out, share, holder = [], corpus.num_blocks / n, 0
    for chunk in corpus.chunks:
        if len(out) >= share * (holder + 1) and holder < n - 1:
            holder += 1
        out += [holder] * chunk.n_blocks(corpus.block_size)
    return out


def _hashed(corpus: Corpus, n: int) -> list[int]:
    return [_stable_hash(b) % n for b in range(corpus.num_blocks)]


class BlockStore:
    """A holder's blocks in a paged layout `kv [L, num_local_blocks, block_size, D]`.

    Layer slices are contiguous, which is what route reads per layer; fetch gathers all
    layers of a selection at once.
    """

    def __init__(self, blocks: Sequence[int], layers: int, block_size: int, width: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.slot = {b: i for i, b in enumerate(blocks)}
        self.kv = torch.zeros(layers, len(self.slot), block_size, width, dtype=dtype, device=device)
        self.block_size = block_size
        self.filled = torch.zeros(len(self.slot), dtype=torch.bool)

    def put_chunk(self, first_block: int, kv: Tensor) -> None:
        """Store the blocks held here of a chunk prefilled as `kv [L, T, D]` (T a multiple of block_size)."""
        n = kv.shape[1] // self.block_size
        blocked = kv.reshape(kv.shape[0], n, self.block_size, kv.shape[-1])
        for i in range(n):
            slot = self.slot.get(first_block + i)
            if slot is not None:
                self.kv[:, slot] = blocked[:, i]
                self.filled[slot] = True

    def slots(self, blocks: Sequence[int] | Tensor) -> Tensor:
        """Local slots of global block ids, on the store's device; an error names a block not held here."""
        return torch.tensor(self._slot_ids(blocks), dtype=torch.long, device=self.kv.device)

    def _slot_ids(self, blocks: Sequence[int] | Tensor) -> list[int]:
        ids = blocks.tolist() if isinstance(blocks, Tensor) else list(blocks)
        missing = [b for b in ids if b not in self.slot]
        if missing:
            raise QrouteError(f"block {missing[0]} is not held here: expected one of this holder's {len(self.slot)} blocks")
        return [self.slot[b] for b in ids]

    def layer_rows(self, layer: int, blocks: Sequence[int] | Tensor) -> Tensor:
        """Rows of the given blocks at one layer: `[n * block_size, D]`."""
        return self.kv[layer].index_select(0, self.slots(blocks)).reshape(-1, self.kv.shape[-1])

    def pin(self) -> None:
        """Move the blocks to pinned (page-locked) host memory: what a GPU copies from at full PCIe rate."""
        self.kv = self.kv.pin_memory()

    def gather(self, blocks: Sequence[int] | Tensor, pinned: bool = False) -> Tensor:
        """All layers of the given blocks, `[L, n * block_size, D]`.

        A run of consecutive slots (a contiguous selection) is returned as a view of the
        store, sent as it lies (no gather); any other selection is gathered into a new buffer
        (`pinned`: page-locked, from torch's caching host allocator, for a copy to a GPU).
        """
        ids = self._slot_ids(blocks)
        L, D, n = self.kv.shape[0], self.kv.shape[-1], len(ids)
        if n and ids == list(range(ids[0], ids[0] + n)):
            return self.kv[:, ids[0] : ids[0] + n].reshape(L, -1, D)  # a view: [L, n * bs, D]
        slots = torch.tensor(ids, dtype=torch.long, device=self.kv.device)
        if not pinned:
            return self.kv.index_select(1, slots).reshape(L, -1, D)  # [L, n, bs, D] gathered
        out = torch.empty((L, n, *self.kv.shape[2:]), dtype=self.kv.dtype, pin_memory=True)
        return torch.index_select(self.kv, 1, slots, out=out).reshape(L, -1, D)
