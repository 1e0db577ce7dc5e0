"""The requester's block cache: keep, find, evict least recently used, never an open request's blocks."""

import pytest
import torch

from qroute.errors import QrouteError
from qroute.runtime.cache import BlockCache


def kv_of(blocks, L=2, bs=4, D=6):
    """Distinct rows per block: block b's rows all equal b."""
    return torch.cat([torch.full((bs, D), float(b)) for b in blocks]).expand(L, -1, -1).clone()


def test_insert_lookup_gather_round_trip_and_stats():
    c = BlockCache(4, 2, 4, 6, torch.float32)
    assert c.insert([10, 11], kv_of([10, 11]))
    c.release([10, 11])
    assert c.lookup([11, 12, 10]) == [11, 10]
    assert torch.equal(c.gather([11, 10]), kv_of([11, 10]))
    assert c.stats.hits == 2 and c.stats.misses == 1 and c.stats.hit_rate == pytest.approx(2 / 3)


def test_lru_eviction_skips_pinned_blocks():
    c = BlockCache(2, 2, 4, 6, torch.float32)
    c.insert([1], kv_of([1]))
    c.release([1])
    c.insert([2], kv_of([2]))  # 2 stays pinned (an open request uses it)
    assert c.insert([3], kv_of([3]))  # evicts 1, the only unpinned block
    assert 1 not in c and 2 in c and 3 in c and c.stats.evictions == 1
    assert not c.insert([4], kv_of([4]))  # 2 and 3 pinned: nothing kept
    assert c.stats.refused == 1 and 4 not in c
    c.release([2, 3])
    c.lookup([2])  # 2 recently used and pinned again; 3 is the LRU victim
    c.release([2])
    assert c.insert([5], kv_of([5])) and 3 not in c and 2 in c
    assert torch.equal(c.gather([5, 2]), kv_of([5, 2]))


def test_bad_capacity_and_shape_are_clear_errors():
    with pytest.raises(QrouteError, match="cache capacity"):
        BlockCache(0, 2, 4, 6, torch.float32)
    c = BlockCache(2, 2, 4, 6, torch.float32)
    with pytest.raises(QrouteError, match=r"kv shape \(2, 4, 6\): expected \[2, 8, 6\]"):
        c.insert([1, 2], torch.zeros(2, 4, 6))
