import pytest

from qroute.calibration.auto import quick_chunk_blocks
from qroute.calibration.grid import QUICK_CHUNK_BLOCKS
from qroute.runtime.store import Placement
from qroute.runtime.world import WorldSpec, build_world
from qroute.workload.corpus import CorpusSpec


def world(chunk_blocks: int, placement: str = "contiguous", tokens: int = 8192):
    corpus = CorpusSpec(max_tokens=tokens, block_size=8, chunk_blocks=chunk_blocks)
    return build_world(WorldSpec(layers=1, hidden=64, heads=4, corpus=corpus, placement=Placement(placement, 0)), [1, 2], "cpu")


@pytest.mark.parametrize("chunk_blocks, expected", [(32, QUICK_CHUNK_BLOCKS), (64, QUICK_CHUNK_BLOCKS), (8, (1, 4, 8)), (16, (1, 7, 15))])
def test_the_quick_grid_scales_to_the_worlds_chunks(chunk_blocks, expected):
    assert quick_chunk_blocks(world(chunk_blocks)) == expected


def test_no_grid_where_one_holders_chunks_cannot_be_served():
    """Hashed placement spreads a chunk's first blocks over the holders: no 8-block request on one holder."""
    assert quick_chunk_blocks(world(8, "hashed")) is None
