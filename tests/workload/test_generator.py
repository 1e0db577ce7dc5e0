"""Agentic workload generator: determinism, arrivals, working sets, validation."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qroute.errors import QrouteError
from qroute.indexer import BlockIndexer
from qroute.workload import skew
from qroute.workload.corpus import CorpusSpec, build_corpus
from qroute.workload.generator import AgentWorkloadSpec, TimedRequest, make_workload


@pytest.fixture(scope="module")
def setup():
    corpus = build_corpus(CorpusSpec(max_tokens=4096, block_size=8, chunk_blocks=8))
    return corpus, BlockIndexer(corpus, dim=64)


def same(a: TimedRequest, b: TimedRequest) -> bool:
    """Equal requests and timing (tasks compared with torch.equal)."""
    ra, rb = a.request, b.request
    fields = ("id", "first_token", "chunk", "blocks", "chunk_tokens", "steps", "sparse", "step_tokens")
    return (
        (a.agent, a.arrival_s) == (b.agent, b.arrival_s)
        and torch.equal(ra.task, rb.task)
        and all(getattr(ra, f) == getattr(rb, f) for f in fields)
    )


def small(**kw) -> AgentWorkloadSpec:
    return AgentWorkloadSpec(**{"agents": 4, "steps_per_agent": 5, "task_tokens": 12, "topk_blocks": 2, **kw})


@pytest.mark.parametrize("sparse", [False, True])
def test_deterministic_in_the_seed(setup, sparse):
    corpus, indexer = setup
    a, b = make_workload(corpus, indexer, small(sparse=sparse)), make_workload(corpus, indexer, small(sparse=sparse))
    assert len(a) == 20 and all(same(x, y) for x, y in zip(a, b, strict=True))
    c = make_workload(corpus, indexer, small(sparse=sparse, seed=1))
    assert not all(same(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("arrival", ["poisson", "closed"])
def test_requests_are_well_formed_and_sorted_by_arrival(setup, arrival):
    corpus, indexer = setup
    spec = small(arrival=arrival, sparse=True, decode_steps=(1, 3), step_tokens=2)
    timed = make_workload(corpus, indexer, spec)
    assert [t.request.id for t in timed] == list(range(20))
    assert [t.arrival_s for t in timed] == sorted(t.arrival_s for t in timed)
    for agent in range(4):
        mine = [t.arrival_s for t in timed if t.agent == agent]
        assert len(mine) == 5 and all(x < y for x, y in pairwise(mine))
    for t in timed:
        r, chunk = t.request, corpus.chunks[t.request.chunk]
        assert r.task.dtype == torch.long and r.task.numel() == 12 and r.offset == 12
        assert r.chunk_tokens == chunk.tokens.numel() and set(r.blocks) <= set(chunk.blocks(8))
        assert len(r.blocks) == min(2, chunk.n_blocks(8)) and r.sparse and r.step_tokens == 2
        assert r.steps in (1, 3)


def test_arrival_process_leaves_contents_alone(setup):
    corpus, indexer = setup
    poisson, closed = (make_workload(corpus, indexer, small(arrival=a)) for a in ("poisson", "closed"))
    for agent in range(4):  # each agent's requests in its step order, whatever the arrival process
        mine = [[t.request for t in w if t.agent == agent] for w in (poisson, closed)]
        assert [r.blocks for r in mine[0]] == [r.blocks for r in mine[1]]
        assert all(torch.equal(x.task, y.task) for x, y in zip(*mine, strict=True))


def test_closed_agents_issue_the_next_request_when_the_previous_finishes(setup):
    corpus, indexer = setup
    timed = make_workload(corpus, indexer, small(arrival="closed", decode_steps=(2, 7), step_s=0.5))
    for agent in range(4):
        mine = [t for t in timed if t.agent == agent]
        assert mine[0].arrival_s == 0.0
        for prev, nxt in pairwise(mine):
            assert math.isclose(nxt.arrival_s - prev.arrival_s, prev.request.steps * 0.5)


def test_poisson_arrivals_have_the_asked_rate(setup):
    corpus, indexer = setup
    spec = small(agents=2, steps_per_agent=300, rate=8.0, seed=5)  # each agent at 4/s: gaps of mean 0.25 s
    timed = make_workload(corpus, indexer, spec)
    gaps = np.concatenate([np.diff([0.0] + [t.arrival_s for t in timed if t.agent == a]) for a in range(2)])
    assert abs(gaps.mean() - 0.25) < 0.25 * 0.15  # 600 gaps: the standard error is ~4%
    assert 0.8 < gaps.std() / gaps.mean() < 1.2  # exponential gaps: coefficient of variation 1
    horizon = min(max(t.arrival_s for t in timed if t.agent == a) for a in range(2))
    seen = sum(t.arrival_s <= horizon for t in timed)
    assert abs(seen / horizon - 8.0) < 8.0 * 0.15


def _skew(setup, **kw) -> dict:
    """Reuse statistics and the top-10% share, averaged over three seeds."""
    corpus, indexer = setup
    runs = [
        skew.summary(skew.selections(make_workload(corpus, indexer, small(steps_per_agent=12, seed=s, **kw))),
                     corpus.num_blocks)
        for s in range(3)
    ]  # fmt: skip
    return {
        "median": np.mean([r["reuse"]["median"] for r in runs]),
        "first_time": np.mean([r["reuse"]["first_time"] for r in runs]),
        "top10": np.mean([r["top10_share"] for r in runs]),
    }


@pytest.mark.parametrize("sparse", [False, True])
def test_persistence_gives_more_reuse(setup, sparse):
    wander = _skew(setup, zipf=0.5, sparse=sparse, persistence=0.0)
    stay = _skew(setup, zipf=0.5, sparse=sparse, persistence=0.9)
    assert stay["median"] < wander["median"] and stay["first_time"] < wander["first_time"]


def test_zipf_gives_more_popular_blocks(setup):
    flat, skewed = _skew(setup, zipf=0.0, persistence=0.0), _skew(setup, zipf=2.0, persistence=0.0)
    assert skewed["top10"] > flat["top10"] and skewed["median"] < flat["median"]


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("agents", 0, "agents=0: expected an integer >= 1"),
        ("steps_per_agent", 2.5, "steps_per_agent=2.5: expected an integer >= 1"),
        ("arrival", "bursty", "arrival='bursty': expected one of poisson, closed"),
        ("rate", 0.0, "rate=0.0: expected a finite number > 0"),
        ("rate", float("inf"), "rate=inf: expected a finite number > 0"),
        ("step_s", -1, "step_s=-1: expected a finite number > 0"),
        ("task_tokens", True, "task_tokens=True: expected an integer >= 1"),
        ("decode_steps", (), r"decode_steps=\(\): expected one or more integers >= 1"),
        ("decode_steps", (4, 0), "decode_steps=0: expected an integer >= 1"),
        ("step_tokens", -2, "step_tokens=-2: expected an integer >= 1"),
        ("topk_blocks", None, "topk_blocks=None: expected an integer >= 1"),
        ("sparse", 1, "sparse=1: expected true or false"),
        ("zipf", -0.5, "zipf=-0.5: expected a finite number >= 0"),
        ("zipf", "1", "zipf='1': expected a finite number >= 0"),
        ("persistence", 1.5, "persistence=1.5: expected a finite number >= 0 and <= 1"),
        ("seed", -1, "seed=-1: expected an integer >= 0"),
    ],
)
def test_bad_config_names_the_value_and_what_was_expected(field, value, expected):
    with pytest.raises(QrouteError, match=f"^{expected}$"):
        AgentWorkloadSpec(**{field: value})


def test_one_decode_steps_value_may_be_an_int():
    assert AgentWorkloadSpec(decode_steps=3).decode_steps == (3,)
    assert AgentWorkloadSpec(decode_steps=[2, 5]).decode_steps == (2, 5)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_persistence_is_a_probability(p):
    if 0.0 <= p <= 1.0:
        assert AgentWorkloadSpec(persistence=p).persistence == p
    else:
        with pytest.raises(QrouteError, match="^persistence="):
            AgentWorkloadSpec(persistence=p)
