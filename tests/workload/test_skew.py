"""Skew of a workload on hand-made selections with known answers, and against brute-force oracles."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qroute.workload import skew
from qroute.workload.agents import AgentRequest
from qroute.workload.generator import TimedRequest

SELS = [[1, 2], [2, 3], [2]]
STREAM = [[1], [1], [2], [1], [3], [2]]  # reuse distances: None, 0, None, 1, None, 2

selections_st = st.lists(st.lists(st.integers(0, 12), max_size=5), max_size=25)


def test_popularity_curve_sorts_by_count_then_block():
    assert skew.popularity(SELS) == [(2, 3), (1, 1), (3, 1)]
    assert skew.popularity([]) == []


def test_top_share_of_the_selected_blocks_or_of_a_population():
    curve = skew.popularity(SELS)  # 5 selections, 3 distinct blocks
    assert skew.top_share(curve, 0.01) == pytest.approx(3 / 5)  # ceil(0.03) = 1 block
    assert skew.top_share(curve, 0.5) == pytest.approx(4 / 5)  # ceil(1.5) = 2 blocks
    assert skew.top_share(curve, 1.0) == 1.0
    assert skew.top_share(curve, 0.1, population=100) == 1.0  # the top 10 of 100 include all 3
    assert skew.top_share(curve, 0.01, population=100) == pytest.approx(3 / 5)
    assert skew.top_share([], 0.1) == 0.0


def test_reuse_distance_counts_distinct_blocks_in_between():
    assert skew.reuse_distances(STREAM) == [None, 0, None, 1, None, 2]
    assert skew.reuse_distances([[1, 2, 3], [1, 2, 3]]) == [None] * 3 + [2, 2, 2]
    assert skew.reuse_distances([[5, 6], [6, 6, 5]]) == [None, None, 0, 0, 1]


def test_reuse_stats():
    stats = skew.reuse_stats([None, 0, None, 1, None, 2])
    assert stats == {"median": 1.0, "p90": pytest.approx(1.8), "first_time": 0.5}
    assert skew.reuse_stats([None, None]) == {"median": None, "p90": None, "first_time": 1.0}
    assert skew.reuse_stats([]) == {"median": None, "p90": None, "first_time": 0.0}


def test_summary_is_json_ready():
    s = skew.summary(STREAM, num_blocks=10)
    assert s == {
        "requests": 6,
        "selections": 6,
        "distinct_blocks": 3,
        "top1_share": pytest.approx(3 / 6),  # block 1, selected 3 times
        "top10_share": pytest.approx(3 / 6),  # ceil(0.1 * 10) = 1 block
        "max_count": 3,
        "reuse": {"median": 1.0, "p90": pytest.approx(1.8), "first_time": 0.5},
    }
    assert json.loads(json.dumps(s)) == s
    assert skew.summary([])["reuse"] == {"median": None, "p90": None, "first_time": 0.0}


def test_selections_of_requests_and_timed_requests():
    r = AgentRequest(0, torch.tensor([1, 2]), 3, chunk=1, blocks=(4, 5), chunk_tokens=16, steps=1, sparse=True)
    assert skew.selections([r, TimedRequest(0, 0.5, r)]) == [(4, 5), (4, 5)]


def _oracle_distances(sels):
    stream = [b for sel in sels for b in sel]
    out = []
    for i, b in enumerate(stream):
        prev = [j for j in range(i) if stream[j] == b]
        out.append(len(set(stream[prev[-1] + 1 : i])) if prev else None)
    return out


@given(selections_st)
def test_reuse_distances_match_a_brute_force_oracle(sels):
    d = skew.reuse_distances(sels)
    assert d == _oracle_distances(sels)
    assert sum(x is None for x in d) == len({b for sel in sels for b in sel})


@given(selections_st, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_top_share_is_a_monotone_share(sels, f, g):
    curve = skew.popularity(sels)
    assert sum(c for _, c in curve) == sum(map(len, sels))
    assert [c for _, c in curve] == sorted((c for _, c in curve), reverse=True)
    lo, hi = skew.top_share(curve, min(f, g)), skew.top_share(curve, max(f, g))
    assert 0.0 <= lo <= hi <= 1.0
    assert skew.top_share(curve, 1.0) == (1.0 if curve else 0.0)
