"""Planning policies: the ski-rental rule's competitive bound, queueing, and each policy's decisions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.cost import CostModel, load_profile
from qroute.errors import QrouteError
from qroute.geometry import preset
from qroute.planner import HolderDemand, Request, holder_options
from qroute.policies import POLICIES, PolicyState, SkiRental, check_policies, decide, queue_wait_s, rent_and_price

MODEL = CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))


def ski_cost(rents, price):
    """What the break-even rule pays for one block set: rents until it buys, then the price, then nothing."""
    ski, paid = SkiRental(), 0.0
    for r in rents:
        if ski.buy([7], r, price):
            return paid + price
        paid += r
    return paid


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40), st.floats(0.01, 50.0))
def test_ski_rental_is_within_twice_the_offline_optimum(rents, price):
    opt = min(sum(rents), price)
    cost = ski_cost(rents, price)
    assert cost < 2 * opt + 1e-9 or (opt == 0 and cost == 0)
    assert cost >= opt - 1e-9  # never better than the offline optimum


def test_ski_rental_bound_is_tight_in_the_worst_case():
    eps = 1e-3
    rents = [eps] * 999 + [eps]  # 1000 small rents; price 1: buys at the last one after paying ~1 in rent
    assert ski_cost(rents, 1.0) == pytest.approx(2.0 - eps, rel=1e-6)


def test_ski_accounts_are_per_block_and_reset_on_buy():
    ski = SkiRental()
    assert not ski.buy([1, 2], 1.0, 3.0) and ski.paid == {1: 0.5, 2: 0.5}
    assert not ski.buy([2, 3], 1.0, 3.0)  # block 2's account carries over
    assert ski.buy([1, 2, 3], 1.0, 3.0) and ski.paid == {}
    with pytest.raises(QrouteError, match="no blocks"):
        ski.buy([], 1.0, 1.0)


def test_queue_wait_grows_without_bound_as_a_holder_saturates_but_is_capped():
    assert queue_wait_s(0.0, 1e-3) == 0.0
    assert queue_wait_s(0.5, 1e-3) == pytest.approx(1e-3)
    assert queue_wait_s(0.9, 1e-3) == pytest.approx(9e-3)
    assert queue_wait_s(1.0, 1e-3) == queue_wait_s(0.95, 1e-3) == pytest.approx(19e-3)


def request(tokens=4096, steps=1, rows=16):
    return Request(rows, 27, (HolderDemand(1, tokens), HolderDemand(2, 256)), steps=steps, offset=100)


def test_forced_and_predicate_policies_match_the_planner():
    r = request()
    assert {h.primitive for h in decide("always-route", MODEL, r).plan.holders} == {"route"}
    assert {h.primitive for h in decide("always-fetch", MODEL, r).plan.holders} == {"fetch"}
    assert decide("predicate", MODEL, r).keep == frozenset()


def test_reuse_rents_a_big_chunk_then_buys_it_after_enough_reuse():
    fast = CostModel(preset("deepseek-v2-lite"), load_profile("h100-kernels"))  # a 25 us splice: hits are cheap
    r = request(tokens=4096, steps=4)
    rent, price = rent_and_price(fast, r, r.demands[0], holder_options(fast, r, r.demands[0]))
    assert 0 < rent < price  # one request alone: routing is cheaper (the predicate routes)
    assert decide("predicate", fast, r).plan.holders[0].primitive == "route"
    state, blocks = PolicyState(), {1: list(range(256)), 2: [5000]}
    picks = [decide("reuse", fast, r, blocks, state).plan.holders[0].primitive for _ in range(int(price / rent) + 2)]
    first_buy = picks.index("fetch")
    assert set(picks[:first_buy]) == {"route"} and first_buy == int(price // rent)  # rent until the break-even


def test_reuse_never_buys_what_a_cache_hit_would_not_beat():
    """published-h100's ~3 ms splice (paid by every request that hits the cache) exceeds one step of routing."""
    r = request(tokens=16384, steps=1)
    rent, _ = rent_and_price(MODEL, r, r.demands[0], holder_options(MODEL, r, r.demands[0]))
    assert rent < 0
    state = PolicyState()
    assert all(decide("reuse", MODEL, r, None, state).plan.holders[0].primitive == "route" for _ in range(50))


def test_reuse_keeps_what_it_fetches():
    r = request(tokens=64, steps=64)  # many steps: fetching pays at once
    d = decide("reuse", MODEL, r, None, PolicyState())
    assert {h.holder for h in d.plan.holders if h.primitive == "fetch"} == set(d.keep) != set()


def test_load_spills_a_busy_holder_that_the_predicate_keeps_routing():
    r = request(tokens=16384, steps=4, rows=256)
    assert decide("predicate", MODEL, r).plan.holders[0].primitive == "route"
    calm, hot = PolicyState(), PolicyState(load={1: 0.95})
    assert decide("load", MODEL, r, None, calm).plan.holders[0].primitive == "route"
    d = decide("load", MODEL, r, None, hot)
    assert d.plan.holders[0].primitive != "route"


def test_unknown_policy_is_one_clear_error():
    with pytest.raises(QrouteError, match="unknown policy 'greedy': expected one of " + ", ".join(POLICIES)):
        check_policies(["predicate", "greedy"])
    with pytest.raises(QrouteError, match="no policy"):
        check_policies([])
