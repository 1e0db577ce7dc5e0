"""DSA-style sparse selection: score every block against a query, keep the top-k.

Like a lightning indexer, scoring is cheap and separate from attention: each block has a
key summary, a query is summarised the same way, and the score is their dot product.
Summaries are hashed token-bigram profiles projected to `dim` by a fixed random matrix
(a Johnson-Lindenstrauss sketch), normalised: they need no trained weights, so a task cut
from a file finds that file's blocks with a real checkpoint or a random one alike.
Requests carry the selection they get here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qroute.errors import QrouteError, positive_int
from qroute.workload.corpus import Corpus

BUCKETS = 4096


def bigram_profile(tokens: Tensor, buckets: int = BUCKETS) -> Tensor:
    """Counts of hashed token bigrams `[..., buckets]` of token rows `[..., T]`."""
    a, b = tokens[..., :-1].long(), tokens[..., 1:].long()
    ids = (a * 1_000_003 + b * 7919) % buckets
    out = torch.zeros(*tokens.shape[:-1], buckets)
    return out.scatter_add_(-1, ids, torch.ones_like(ids, dtype=out.dtype))


class BlockIndexer:
    """Block key summaries `[num_blocks, dim]` and top-k selection."""

    def __init__(self, corpus: Corpus, dim: int = 64, seed: int = 0) -> None:
        positive_int("indexer dim", dim)
        g = torch.Generator().manual_seed(seed)
        self.project = torch.randn(BUCKETS, dim, generator=g) / dim**0.5
        self.corpus = corpus
        tokens = torch.cat([c.tokens for c in corpus.chunks]).view(corpus.num_blocks, corpus.block_size)
        self.keys = self._summary(bigram_profile(tokens))  # [num_blocks, dim]

    def _summary(self, profile: Tensor) -> Tensor:
        return torch.nn.functional.normalize(profile @ self.project, dim=-1)

    def query(self, tokens: Tensor) -> Tensor:
        """The indexer query `[dim]` of a token sequence."""
        return self._summary(bigram_profile(tokens))

    def scores(self, tokens: Tensor) -> Tensor:
        """Score of every block `[num_blocks]` for a query sequence."""
        return self.keys @ self.query(tokens)

    def top_chunk(self, tokens: Tensor, topk: int) -> int:
        """The chunk holding the best top-k blocks (sum of its best `topk` block scores)."""
        s, best, best_score = self.scores(tokens), 0, float("-inf")
        for c in self.corpus.chunks:
            blocks = s[c.first_block : c.first_block + c.n_blocks(self.corpus.block_size)]
            score = float(blocks.topk(min(topk, blocks.numel())).values.sum())
            if score > best_score:
                best, best_score = c.id, score
        return best

    def select_in_chunk(self, tokens: Tensor, chunk: int, topk: int) -> list[int]:
        """The top-k blocks of one chunk, in block order."""
        if topk < 1:
            raise QrouteError(f"topk={topk}: expected >= 1")
        c = self.corpus.chunks[chunk]
        n = c.n_blocks(self.corpus.block_size)
        s = self.scores(tokens)[c.first_block : c.first_block + n]
        picked = s.topk(min(topk, n)).indices.sort().values
        return [c.first_block + int(i) for i in picked]
