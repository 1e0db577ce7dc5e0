"""What the simulator serves: `SimRequest`s over a `Layout`, synthetic (numpy, no corpus or indexer, so a
million decode steps are drawn in well under a second) or taken from the generator's / a trace's
`TimedRequest`s.

The synthetic generator follows `workload.generator`'s model without its text: each agent issues
`requests_per_agent` requests; the first picks a chunk by Zipf popularity, each next one keeps the
previous chunk with probability `persistence`; a request selects the whole chunk (or `topk_blocks`
random blocks of it when `sparse`), reuses it after a task of `task_tokens` tokens, and decodes
`decode_steps` steps (drawn per request) of `step_tokens` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from qroute.errors import QrouteError, non_negative_int, positive_int, require
from qroute.sim.topology import Layout

ARRIVALS = ("poisson", "closed")


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One sub-agent request: its selected `blocks` (ascending ids) of `chunk`, reused at logical `offset`."""

    agent: int
    arrival_s: float
    chunk: int
    blocks: Sequence[int]  # a tuple, or a range for a whole chunk
    steps: int
    offset: int  # task tokens before the chunk
    step_tokens: int = 1
    sparse: bool = False


@dataclass(frozen=True)
class SimWorkload:
    """A synthetic agent workload (see the module docstring); arrivals as `workload.generator`."""

    agents: int = 64
    requests_per_agent: int = 4
    decode_steps: tuple[int, ...] = (16,)
    task_tokens: int = 256
    step_tokens: int = 1
    chunks: int = 64
    chunk_blocks: int = 32
    block_size: int = 64
    topk_blocks: int = 8
    sparse: bool = False
    zipf: float = 1.1
    persistence: float = 0.5
    arrival: str = "poisson"
    rate: float = 1000.0
    step_s: float = 0.002
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("agents", "requests_per_agent", "task_tokens", "step_tokens", "chunks", "chunk_blocks",
                     "block_size", "topk_blocks"):  # fmt: skip
            positive_int(name.replace("_", " "), getattr(self, name))
        non_negative_int("seed", self.seed)
        if isinstance(self.decode_steps, int):
            object.__setattr__(self, "decode_steps", (self.decode_steps,))
        require(len(self.decode_steps) > 0, "decode steps: expected one or more integers >= 1")
        object.__setattr__(self, "decode_steps", tuple(positive_int("decode steps", s) for s in self.decode_steps))
        require(self.arrival in ARRIVALS, f"arrival={self.arrival!r}: expected one of {', '.join(ARRIVALS)}")
        for name, lo, hi in (("zipf", 0.0, math.inf), ("persistence", 0.0, 1.0)):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and lo <= v <= hi, f"{name}={v!r}: expected a number in [{lo}, {hi}]")
        for name in ("rate", "step_s"):
            v = getattr(self, name)
            require(isinstance(v, (int, float)) and 0 < v < math.inf, f"{name}={v!r}: expected a finite number > 0")
        if self.sparse and self.topk_blocks > self.chunk_blocks:
            raise QrouteError(f"topk blocks={self.topk_blocks}: expected <= chunk blocks={self.chunk_blocks}")

    @property
    def decode_steps_total(self) -> float:
        """Expected session-steps of the whole workload."""
        return self.agents * self.requests_per_agent * float(np.mean(self.decode_steps))


def synthetic(spec: SimWorkload) -> tuple[Layout, list[SimRequest]]:
    """The layout and every agent's requests, sorted by (arrival, agent, step); deterministic in `spec.seed`."""
    layout = Layout.uniform(spec.chunks, spec.chunk_blocks, spec.block_size)
    content, timing = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(2))
    A, K = spec.agents, spec.requests_per_agent
    weights = 1.0 / np.arange(1, spec.chunks + 1) ** spec.zipf
    popular = content.permutation(spec.chunks)[content.choice(spec.chunks, size=(A, K), p=weights / weights.sum())]
    moves = content.random((A, K)) >= spec.persistence
    moves[:, 0] = True
    last_move = np.maximum.accumulate(np.where(moves, np.arange(K), 0), axis=1)  # index of the draw each step keeps
    chunk = np.take_along_axis(popular, last_move, axis=1)  # [A, K]
    steps = np.asarray(spec.decode_steps)[content.integers(len(spec.decode_steps), size=(A, K))]
    if spec.arrival == "poisson":
        arrival = timing.exponential(A / spec.rate, size=(A, K)).cumsum(axis=1)
    else:
        arrival = np.concatenate([np.zeros((A, 1)), (steps[:, :-1] * spec.step_s).cumsum(axis=1)], axis=1)
    order = np.lexsort((np.tile(np.arange(K), A), np.repeat(np.arange(A), K), arrival.ravel()))
    out = []
    for i in order.tolist():
        a, k = divmod(i, K)
        c = int(chunk[a, k])
        first = layout.first[c]
        if spec.sparse:
            picked = np.sort(content.choice(spec.chunk_blocks, size=spec.topk_blocks, replace=False)) + first
            blocks: Sequence[int] = tuple(picked.tolist())
        else:
            blocks = range(first, first + spec.chunk_blocks)
        out.append(SimRequest(a, float(arrival[a, k]), c, blocks, int(steps[a, k]), spec.task_tokens,
                              spec.step_tokens, spec.sparse))  # fmt: skip
    return layout, out


def from_timed(timed: Iterable, layout: Layout) -> list[SimRequest]:
    """`SimRequest`s of `workload.generator.TimedRequest`s (generated, or read from a trace) on `layout`."""
    out = []
    for t in timed:
        r = t.request
        require(0 <= r.chunk < len(layout.first), f"request {r.id}: chunk {r.chunk}: expected < {len(layout.first)} chunks")
        out.append(SimRequest(t.agent, float(t.arrival_s), r.chunk, tuple(r.blocks), r.steps, int(r.task.numel()),
                              r.step_tokens, r.sparse))  # fmt: skip
    return out


def layout_of(corpus) -> Layout:
    """The layout of a `workload.corpus.Corpus` (its chunks' first blocks and block counts)."""
    bs = corpus.block_size
    return Layout(tuple(c.first_block for c in corpus.chunks), tuple(c.n_blocks(bs) for c in corpus.chunks), bs)
