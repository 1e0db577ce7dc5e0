"""The holder's store: every chunk prefilled, or (calibration, `timing_only`) one real prefill repeated."""

import torch

from qroute.runtime.holder import build_store
from qroute.runtime.world import WorldSpec, build_world
from qroute.workload.corpus import CorpusSpec


def test_a_timing_only_store_repeats_one_real_prefill_at_the_same_positions_shapes_and_bytes():
    """The same blocks held and filled, in the same shapes and dtype; the longest held chunk's blocks as prefilled,
    every other chunk's blocks those of its first tokens (canonical positions 0..T-1 either way)."""
    world = build_world(WorldSpec(corpus=CorpusSpec(max_tokens=1536, chunk_blocks=8)), [1, 2])
    bs = world.corpus.block_size
    real = build_store(1, world.corpus, world.directory, world.model)
    quick = build_store(1, world.corpus, world.directory, world.model, timing_only=True)
    assert quick.slot == real.slot and quick.kv.shape == real.kv.shape and quick.kv.dtype == real.kv.dtype
    assert bool(quick.filled.all()) and bool(real.filled.all())
    chunks = [c for c in world.corpus.chunks if set(c.blocks(bs)) & set(real.slot)]
    assert len(chunks) >= 2
    longest = max(chunks, key=lambda c: c.tokens.numel())
    first = list(longest.blocks(bs))
    for chunk in chunks:
        for i, block in enumerate(chunk.blocks(bs)):
            assert torch.equal(quick.kv[:, quick.slot[block]], real.kv[:, real.slot[first[i]]])
    other = next(c for c in chunks if c is not longest)
    block = next(iter(other.blocks(bs)))
    assert not torch.equal(quick.kv[:, quick.slot[block]], real.kv[:, real.slot[block]])  # no longer its own values
