"""A requester's block cache in the simulator: `runtime.cache.BlockCache`'s bookkeeping without the KV."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence


class LruCache:
    """A requester's block cache (as `runtime.cache.BlockCache`, without the KV): LRU over block ids."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.blocks = capacity, OrderedDict()
        self.hits = self.misses = self.inserted = self.evictions = self.refused = 0

    def lookup(self, blocks: Sequence[int]) -> list[int]:
        hits = [b for b in blocks if b in self.blocks]
        for b in hits:
            self.blocks.move_to_end(b)
        self.hits, self.misses = self.hits + len(hits), self.misses + len(blocks) - len(hits)
        return hits

    def insert(self, blocks: Sequence[int], pinned: set) -> None:
        """Keep `blocks`, evicting the least recently used others; refused (nothing kept) when the cache, less
        this open's `pinned` hits and the blocks of `blocks` it already holds, has no room for the new ones."""
        keep = set(blocks)
        new = [b for b in dict.fromkeys(blocks) if b not in self.blocks]
        held = sum(b in self.blocks for b in keep | set(pinned))
        if len(new) > self.capacity - held:
            self.refused += len(blocks)
            return
        for b in dict.fromkeys(blocks):
            if b in self.blocks:
                self.blocks.move_to_end(b)
        for b in new:
            if len(self.blocks) >= self.capacity:
                victim = next(v for v in self.blocks if v not in pinned and v not in keep)
                del self.blocks[victim]
                self.evictions += 1
            self.blocks[b] = None
            self.inserted += 1

    def as_dict(self) -> dict:
        seen = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / seen if seen else None,
                "inserted": self.inserted, "evictions": self.evictions, "refused": self.refused,
                "capacity_blocks": self.capacity}  # fmt: skip


def merge_caches(caches: list[LruCache]) -> dict | None:
    if not caches:
        return None
    out = {k: sum(getattr(c, k) for c in caches) for k in ("hits", "misses", "inserted", "evictions", "refused")}
    seen = out["hits"] + out["misses"]
    return {**out, "hit_rate": out["hits"] / seen if seen else None, "capacity_blocks": sum(c.capacity for c in caches)}
