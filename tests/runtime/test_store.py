"""Placement, directory and the paged block store."""

import pytest
import torch

from qroute.errors import QrouteError
from qroute.runtime.store import BlockStore, Placement, place
from qroute.workload.corpus import CorpusSpec, build_corpus


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(CorpusSpec(max_tokens=4096, block_size=8, chunk_blocks=8))


def test_contiguous_keeps_chunks_whole_and_balances(corpus):
    d = place(corpus, [1, 2, 3], Placement("contiguous"))
    for chunk in corpus.chunks:
        assert len({d.primary(b) for b in chunk.blocks(8)}) == 1
    counts = [len(d.blocks_on(h)) for h in (1, 2, 3)]
    assert max(counts) - min(counts) <= 2 * 8  # within a chunk or two of even
    assert sum(counts) == corpus.num_blocks


def test_hashed_spreads_blocks_and_replicas_are_distinct(corpus):
    d = place(corpus, [4, 5, 6], Placement("hashed", replicas=2))
    assert all(len(set(d.holders_of(b))) == 3 for b in range(corpus.num_blocks))
    primaries = [d.primary(b) for b in range(corpus.num_blocks)]
    assert all(primaries.count(h) > corpus.num_blocks / 6 for h in (4, 5, 6))
    assert place(corpus, [4, 5, 6], Placement("hashed")).holders_of_block == place(corpus, [4, 5, 6], Placement("hashed")).holders_of_block


def test_bad_placements(corpus):
    with pytest.raises(QrouteError, match="placement 'ring'"):
        Placement("ring")
    with pytest.raises(QrouteError, match="replicas=2: expected < holders=2"):
        place(corpus, [1, 2], Placement(replicas=2))
    with pytest.raises(QrouteError, match="block id 99999 out of range"):
        place(corpus, [1], Placement()).holders_of(99999)


def test_store_pages_and_gathers(corpus):
    g = torch.Generator().manual_seed(0)
    store = BlockStore([3, 5, 6], layers=2, block_size=4, width=6, dtype=torch.float32)
    kv = torch.randn(2, 16, 6, generator=g)  # a chunk of 4 blocks starting at block 3
    store.put_chunk(3, kv)
    assert torch.equal(store.layer_rows(1, [5]), kv[1, 8:12])
    assert torch.equal(store.gather([6, 3]), torch.cat((kv[:, 12:16], kv[:, 0:4]), dim=1))
    assert store.filled.all()
    with pytest.raises(QrouteError, match="block 4 is not held here"):
        store.gather([4])
