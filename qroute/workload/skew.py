"""How skewed a workload is: which blocks are popular, and how soon a selected block is selected again.

Pure functions over selections: one sequence of block ids per request, requests in arrival
order (`selections` turns requests into them). The selection stream is the requests'
blocks one after another; a block's reuse distance at a selection is the number of distinct
other blocks selected since its previous selection (an LRU stack distance: an LRU cache of
`distance + 1` blocks would still hold it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

Selections = Sequence[Sequence[int]]


def selections(requests: Iterable) -> list[tuple[int, ...]]:
    """The selected blocks of each `AgentRequest` or `TimedRequest`, in the given order."""
    return [tuple(getattr(r, "request", r).blocks) for r in requests]


def popularity(sels: Selections) -> list[tuple[int, int]]:
    """The popularity curve: `(block, selections of it)` by decreasing count, ties by block id."""
    counts = Counter(b for sel in sels for b in sel)
    return sorted(counts.items(), key=lambda bc: (-bc[1], bc[0]))


def top_share(curve: Sequence[tuple[int, int]], fraction: float, population: int | None = None) -> float:
    """Share of all selections that go to the `ceil(fraction * population)` most selected blocks.

    `population`: the number of blocks that could be selected (the corpus's); default, the blocks
    selected at least once. 0.0 for an empty curve."""
    total = sum(c for _, c in curve)
    if total == 0:
        return 0.0
    n = len(curve) if population is None else population
    k = max(1, math.ceil(fraction * n))
    return sum(c for _, c in curve[:k]) / total


def reuse_distances(sels: Selections) -> list[int | None]:
    """Per selection of the stream, in order: its reuse distance, or None for a block's first selection.

    O(selections * distinct blocks), the scan done by `list.index`."""
    recent: list[int] = []  # distinct blocks, least recently selected first
    seen: set[int] = set()
    out: list[int | None] = []
    for b in (b for sel in sels for b in sel):
        if b in seen:
            i = recent.index(b)
            out.append(len(recent) - 1 - i)
            del recent[i]
        else:
            out.append(None)
            seen.add(b)
        recent.append(b)
    return out


def reuse_stats(distances: Sequence[int | None]) -> dict:
    """Median and 90th percentile of the reuse distances of re-selections (None when there is none),
    and the fraction of selections that are first-time ones."""
    again = [d for d in distances if d is not None]
    first = (len(distances) - len(again)) / len(distances) if distances else 0.0
    if not again:
        return {"median": None, "p90": None, "first_time": first}
    median, p90 = np.percentile(np.array(again, dtype=np.float64), [50, 90])
    return {"median": float(median), "p90": float(p90), "first_time": first}


def summary(sels: Selections, num_blocks: int | None = None) -> dict:
    """A JSON-ready digest: counts, top-1%/10% shares (of `num_blocks`, default the selected blocks),
    the most selected block and reuse-distance statistics."""
    curve = popularity(sels)
    return {
        "requests": len(sels),
        "selections": sum(c for _, c in curve),
        "distinct_blocks": len(curve),
        "top1_share": top_share(curve, 0.01, num_blocks),
        "top10_share": top_share(curve, 0.10, num_blocks),
        "max_count": curve[0][1] if curve else 0,
        "reuse": reuse_stats(reuse_distances(sels)),
    }
