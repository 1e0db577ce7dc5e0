"""The requester's block cache: local copies of remote blocks, kept for later requests (fetch-and-keep).

Blocks are kept as their holders store them, at canonical positions, so one copy serves
requests that reuse its chunk at any offset: a request copies its hits out (`gather`) and
splices the copy by its own offset, as it would a fetched reply, without moving a byte over
the fabric. Capacity is in blocks; when it is full, the least recently used unpinned block
is evicted (blocks are pinned between a request's lookup and its copy, so that keeping
another holder's reply cannot evict them).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from qroute.errors import QrouteError, positive_int
from qroute.runtime.store import BlockStore


@dataclass
class CacheStats:
    hits: int = 0  # selected blocks found in the cache
    misses: int = 0  # selected remote blocks not in it
    inserted: int = 0
    evictions: int = 0
    refused: int = 0  # blocks not kept: every slot pinned by open sessions

    @property
    def hit_rate(self) -> float | None:
        seen = self.hits + self.misses
        return self.hits / seen if seen else None

    def as_dict(self, capacity: int) -> dict:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate, "inserted": self.inserted,
                "evictions": self.evictions, "refused": self.refused, "capacity_blocks": capacity}  # fmt: skip


class BlockCache(BlockStore):
    """`capacity` blocks `kv [L, capacity, block_size, D]` on `device`, LRU over unpinned blocks."""

    def __init__(self, capacity: int, layers: int, block_size: int, width: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        positive_int("cache capacity (blocks)", capacity)
        self.kv = torch.zeros(layers, capacity, block_size, width, dtype=dtype, device=device)
        self.block_size = block_size
        self.capacity = capacity
        self.slot: dict[int, int] = {}
        self.filled = torch.ones(capacity, dtype=torch.bool)
        self._free = list(range(capacity - 1, -1, -1))
        self._lru: OrderedDict[int, None] = OrderedDict()  # unpinned blocks, least recently used first
        self._pins: dict[int, int] = {}
        self.stats = CacheStats()

    def __contains__(self, block: int) -> bool:
        return block in self.slot

    def lookup(self, blocks: Sequence[int]) -> list[int]:
        """The blocks of `blocks` held here (pinned until `release`); counts hits and misses."""
        hits = [b for b in blocks if b in self.slot]
        self.stats.hits += len(hits)
        self.stats.misses += len(blocks) - len(hits)
        for b in hits:
            self._pin(b)
        return hits

    def insert(self, blocks: Sequence[int], kv: Tensor) -> bool:
        """Keep `kv [L, len(blocks) * block_size, D]` (canonical positions) for `blocks`, pinned; False (nothing
        kept) when not enough slots are free or evictable."""
        new = [b for b in dict.fromkeys(blocks) if b not in self.slot]
        if len(new) > len(self._free) + len(self._lru):
            self.stats.refused += len(blocks)
            return False
        L, D = self.kv.shape[0], self.kv.shape[-1]
        if kv.shape != (L, len(blocks) * self.block_size, D):
            raise QrouteError(f"cache insert: kv shape {tuple(kv.shape)}: expected [{L}, {len(blocks) * self.block_size}, {D}]")
        rows = kv.reshape(L, len(blocks), self.block_size, D)
        for i, b in enumerate(blocks):
            if b not in self.slot:
                self.slot[b] = self._take_slot()
                self.kv[:, self.slot[b]] = rows[:, i]
                self.stats.inserted += 1
            self._pin(b)
        return True

    def release(self, blocks: Sequence[int]) -> None:
        """A session is done with `blocks`: unpin them (evictable again, most recently used)."""
        for b in blocks:
            n = self._pins.get(b, 0)
            if n <= 1:
                self._pins.pop(b, None)
                if b in self.slot:
                    self._lru[b] = None
            else:
                self._pins[b] = n - 1

    def _pin(self, b: int) -> None:
        self._pins[b] = self._pins.get(b, 0) + 1
        self._lru.pop(b, None)

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        victim, _ = self._lru.popitem(last=False)
        self.stats.evictions += 1
        return self.slot.pop(victim)
