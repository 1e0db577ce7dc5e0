"""The training grid's corpus for `calibrate --quick`."""

import pytest

from qroute.calibration import grid
from qroute.runtime.world import WorldSpec
from qroute.workload.corpus import CorpusSpec


@pytest.mark.parametrize("holders", [1, 2, 3, 4])
def test_the_quick_corpus_holds_the_wide_fetch_on_a_holder(holders):
    """`calibrate --quick`'s corpus (2,048 tokens a holder: half the full one with 2 holders) still holds a wide
    fetch's blocks on one holder, whatever the holders."""
    from qroute.calibration.shapes import wide_request
    from qroute.runtime.world import build_world

    tokens = grid.quick_corpus_tokens(holders)
    assert tokens == 2048 * holders
    world = build_world(WorldSpec(corpus=CorpusSpec(max_tokens=tokens, chunk_blocks=32)), list(range(1, holders + 1)))
    wide = wide_request(world, grid.WIDE_BLOCKS * max(grid.QUICK_CHUNK_BLOCKS), seed=1)
    assert wide is not None and len(wide.blocks) == grid.WIDE_BLOCKS * max(grid.QUICK_CHUNK_BLOCKS)
