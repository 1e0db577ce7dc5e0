"""Agentic workloads: many sub-agents, each issuing a sequence of requests over one shared corpus.

An agent works in one area of the corpus at a time (its working set). At each of its steps
it cuts a task window from a source chunk (as `agents.make_requests` does), asks the indexer
for a chunk and a selection, and decodes. With probability `persistence` its next window is
cut near the previous one, so it tends to select the same chunk and blocks again; otherwise
it moves to a new Zipf-chosen source. Selections thus overlap across an agent's steps
(persistence) and across agents (Zipf popularity).

Arrivals are in virtual seconds. `poisson`: each agent is a Poisson process at
`rate / agents`, so all agents together issue `rate` requests per second. `closed`: every
agent starts at 0 and issues its next request when the previous one finishes, a request
of `steps` decode steps lasting `steps * step_s`.

Contents and arrival times come from two independent streams of `seed`: changing the
arrival process leaves every agent's requests as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from torch import Tensor

from qroute.errors import QrouteError, non_negative_int, positive_int, require
from qroute.indexer import BlockIndexer
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import Corpus

ARRIVALS = ("poisson", "closed")


@dataclass(frozen=True)
class AgentWorkloadSpec:
    """`steps_per_agent`: requests each agent issues one after another; `decode_steps`: decode steps of
    one request, drawn uniformly from these values; `persistence`: probability that an agent's next
    request keeps its working set (a task window near its previous one, in the same source chunk)."""

    agents: int = 8
    steps_per_agent: int = 4
    arrival: str = "poisson"
    rate: float = 10.0  # requests per virtual second, all agents together (poisson)
    step_s: float = 0.02  # virtual seconds per decode step (closed)
    task_tokens: int = 24
    decode_steps: tuple[int, ...] = (4,)
    step_tokens: int = 1
    topk_blocks: int = 4
    sparse: bool = False
    zipf: float = 1.1  # 0: uniform over chunks
    persistence: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("agents", "steps_per_agent", "task_tokens", "step_tokens", "topk_blocks"):
            positive_int(name, getattr(self, name))
        non_negative_int("seed", self.seed)
        require(self.arrival in ARRIVALS, f"arrival={self.arrival!r}: expected one of {', '.join(ARRIVALS)}")
        require(isinstance(self.sparse, bool), f"sparse={self.sparse!r}: expected true or false")
        _real("rate", self.rate, lo=0.0, lo_open=True)
        _real("step_s", self.step_s, lo=0.0, lo_open=True)
        _real("zipf", self.zipf, lo=0.0)
        _real("persistence", self.persistence, lo=0.0, hi=1.0)
        if isinstance(self.decode_steps, int):
            object.__setattr__(self, "decode_steps", (self.decode_steps,))
        require(
            isinstance(self.decode_steps, (tuple, list)) and len(self.decode_steps) > 0,
            f"decode_steps={self.decode_steps!r}: expected one or more integers >= 1",
        )
        object.__setattr__(self, "decode_steps", tuple(positive_int("decode_steps", s) for s in self.decode_steps))


@dataclass(frozen=True)
class TimedRequest:
    """A request with the agent that issues it and its arrival time (virtual seconds)."""

    agent: int
    arrival_s: float
    request: AgentRequest


def make_workload(corpus: Corpus, indexer: BlockIndexer, spec: AgentWorkloadSpec) -> list[TimedRequest]:
    """All agents' requests, sorted by arrival (ties: agent, then step), with ids in that order.

    Deterministic in `spec.seed`. `agents * steps_per_agent` requests."""
    content_seed, time_seed = np.random.SeedSequence(spec.seed).spawn(2)
    per_agent = _agent_requests(corpus, indexer, spec, np.random.default_rng(content_seed))
    arrivals = _arrivals(spec, per_agent, np.random.default_rng(time_seed))  # [agents, steps_per_agent]
    order = sorted((float(arrivals[a, s]), a, s) for a in range(spec.agents) for s in range(spec.steps_per_agent))
    return [TimedRequest(a, t, replace(per_agent[a][s], id=i)) for i, (t, a, s) in enumerate(order)]


def _agent_requests(
    corpus: Corpus, indexer: BlockIndexer, spec: AgentWorkloadSpec, rng: np.random.Generator
) -> list[list[AgentRequest]]:
    """Each agent's requests in step order (ids set later).

    An agent keeps its working set with probability `persistence`: the next task window is cut from
    the same source, starting within `task_tokens // 2` of the previous start; otherwise it moves to
    a new Zipf-chosen source and a window drawn anywhere in it."""
    weights = 1.0 / np.arange(1, len(corpus.chunks) + 1) ** spec.zipf
    weights /= weights.sum()
    order = rng.permutation(len(corpus.chunks))  # which chunks are popular
    out = []
    for _ in range(spec.agents):
        steps: list[AgentRequest] = []
        source, start = -1, None
        for s in range(spec.steps_per_agent):
            if s == 0 or rng.random() >= spec.persistence:
                source, start = int(order[rng.choice(len(order), p=weights)]), None
            task, first, start = _window(corpus.chunks[source].tokens, spec.task_tokens, rng, start)
            steps.append(_request(corpus, indexer, spec, task, first, rng))
        out.append(steps)
    return out


def _window(tokens: Tensor, length: int, rng: np.random.Generator, near: int | None) -> tuple[Tensor, int, int]:
    """A window `[length]` of `tokens` (wrapping short sources), the token after it and its start:
    anywhere (as `agents.make_requests` draws tasks) when `near` is None, else within `length // 2` of it."""
    reps = (length + 1) // tokens.numel() + 1
    text = tokens.repeat(reps) if reps > 1 else tokens
    starts = text.numel() - length  # valid starts: [0, starts)
    if near is None:
        start = int(rng.integers(0, starts))
    else:
        start = int(np.clip(near + rng.integers(-(length // 2), length // 2 + 1), 0, starts - 1))
    return text[start : start + length].clone(), int(text[start + length]), start


def _request(
    corpus: Corpus,
    indexer: BlockIndexer,
    spec: AgentWorkloadSpec,
    task: Tensor,
    first: int,
    rng: np.random.Generator,
) -> AgentRequest:
    """The request of one task: the indexer's chunk and selection, decode steps drawn from the spec."""
    chunk = indexer.top_chunk(task, spec.topk_blocks)
    c = corpus.chunks[chunk]
    all_blocks = list(c.blocks(corpus.block_size))
    blocks = indexer.select_in_chunk(task, chunk, spec.topk_blocks) if spec.sparse else all_blocks
    steps = int(spec.decode_steps[rng.integers(len(spec.decode_steps))])
    return AgentRequest(-1, task, first, chunk, tuple(blocks), c.tokens.numel(), steps, spec.sparse, spec.step_tokens)


def _arrivals(spec: AgentWorkloadSpec, per_agent: list[list[AgentRequest]], rng: np.random.Generator) -> np.ndarray:
    """Arrival times `[agents, steps_per_agent]` float64 seconds, increasing along each row."""
    shape = (spec.agents, spec.steps_per_agent)
    if spec.arrival == "poisson":
        return rng.exponential(spec.agents / spec.rate, size=shape).cumsum(axis=1)
    durations = np.array([[r.steps * spec.step_s for r in steps] for steps in per_agent])
    return np.concatenate([np.zeros((spec.agents, 1)), durations[:, :-1].cumsum(axis=1)], axis=1)


def _real(name: str, value, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    """`value` as a finite number in [lo, hi] (or (lo, hi] when `lo_open`), or a QrouteError naming `name`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
        raise QrouteError(f"{name}={value!r}: expected a finite number {bound}")
    return float(value)
