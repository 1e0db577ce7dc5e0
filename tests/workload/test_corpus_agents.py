"""Corpus from real files, DSA-style selection, sub-agent requests."""

import pytest

from qroute.errors import QrouteError
from qroute.indexer import BlockIndexer
from qroute.workload.agents import WorkloadSpec, batches, make_requests
from qroute.workload.corpus import ByteTokenizer, CorpusSpec, build_corpus


def test_stdlib_corpus_is_real_text_cut_into_blocks():
    c = build_corpus(CorpusSpec(max_tokens=3000, block_size=16, chunk_blocks=4))
    assert c.num_tokens >= 3000 and c.num_tokens % 16 == 0
    first = c.chunks[0]
    assert first.source.endswith(".py@0")
    text = bytes(first.tokens.tolist()).decode("utf-8", errors="replace")
    assert text.isprintable() or "\n" in text
    for chunk in c.chunks:
        assert chunk.tokens.numel() <= 64 and chunk.tokens.numel() % 16 == 0
        for b in chunk.blocks(16):
            assert c.chunk_of(b) is chunk
    assert [ch.first_block for ch in c.chunks] == sorted(ch.first_block for ch in c.chunks)


def test_any_directory(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("hello world " * 10)
    c = build_corpus(CorpusSpec(str(tmp_path), pattern="*.txt", max_tokens=1000, block_size=8, chunk_blocks=4))
    assert c.chunks[0].source == "a.txt@0" and c.chunks[-1].source.startswith("sub/b.txt@")
    assert c.block_tokens(0).tolist() == ByteTokenizer().encode("x" * 8)


def test_bad_corpus_dirs(tmp_path):
    with pytest.raises(QrouteError, match="is not a directory"):
        build_corpus(CorpusSpec(str(tmp_path / "nope")))
    with pytest.raises(QrouteError, match="no files matching"):
        build_corpus(CorpusSpec(str(tmp_path)))
    (tmp_path / "tiny.py").write_text("x")
    with pytest.raises(QrouteError, match="no file with at least 16 tokens"):
        build_corpus(CorpusSpec(str(tmp_path)))


@pytest.fixture(scope="module")
def setup():
    corpus = build_corpus(CorpusSpec(max_tokens=4096, block_size=8, chunk_blocks=8))
    return corpus, BlockIndexer(corpus, dim=64)


def test_indexer_prefers_the_chunk_a_task_was_cut_from(setup):
    corpus, indexer = setup
    hits = sum(indexer.top_chunk(c.tokens[:24], 4) == c.id for c in corpus.chunks if c.tokens.numel() >= 64)
    assert hits >= 0.5 * sum(c.tokens.numel() >= 64 for c in corpus.chunks)
    chunk = corpus.chunks[3]
    picked = indexer.select_in_chunk(chunk.tokens[:24], chunk.id, 3)
    assert len(picked) == min(3, chunk.n_blocks(8)) and picked == sorted(picked)
    assert all(b in chunk.blocks(8) for b in picked)


@pytest.mark.parametrize("sparse", [False, True])
def test_requests_are_deterministic_and_skewed(setup, sparse):
    corpus, indexer = setup
    spec = WorkloadSpec(requests=40, task_tokens=12, steps=(1, 5), topk_blocks=2, sparse=sparse, seed=3)
    a, b = make_requests(corpus, indexer, spec), make_requests(corpus, indexer, spec)
    assert [(r.chunk, r.blocks, r.first_token) for r in a] == [(r.chunk, r.blocks, r.first_token) for r in b]
    for r in a:
        chunk = corpus.chunks[r.chunk]
        assert r.offset == 12 and r.chunk_tokens == chunk.tokens.numel()
        assert set(r.blocks) <= set(chunk.blocks(8))
        assert len(r.blocks) == (min(2, chunk.n_blocks(8)) if sparse else chunk.n_blocks(8))
    chunks = [r.chunk for r in a]
    assert max(chunks.count(c) for c in set(chunks)) >= 3  # Zipf: popular chunks repeat
    assert {r.steps for r in a} == {1, 5}
    for batch in batches(a, 3):
        assert len(batch) <= 3 and len({r.steps for r in batch}) == 1
