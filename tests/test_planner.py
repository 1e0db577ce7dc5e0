"""Planner: per-holder choices, the whole-request combination, batched decisions."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.cost import CostModel, Shape, load_profile
from qroute.errors import QrouteError
from qroute.geometry import preset
from qroute.planner import (
    HolderDemand, Request, combine, decide_batch, holder_options, plan, uniform_phases, uniform_request,
)  # fmt: skip
from qroute.cost.model import PRIMITIVES


@pytest.fixture(scope="module")
def model():
    return CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))


@pytest.fixture(scope="module")
def two_path_model(model):
    return dataclasses.replace(model, profile=dataclasses.replace(model.profile, default_paths=("ibgda", "nvlink4")))


@pytest.mark.parametrize("holders", [1, 3, 7])
@pytest.mark.parametrize("prim", PRIMITIVES)
@pytest.mark.parametrize("ports, serial, cap, stalls", [(1.0, 0.0, None, 0.0), (0.3, 0.5, None, 0.0), (0.3, 0.5, 2e-6, 0.0),
                                                        (1.0, 0.0, None, 2e3)])  # fmt: skip
def test_uniform_combination_equals_the_homogeneous_formula(model, holders, prim, ports, serial, cap, stalls):
    ibgda = dataclasses.replace(model.profile.path("ibgda"), bytes_serial=ports, holder_serial=serial, serial_cap_s=cap,
                                stall_rate=stalls, stall_s=1e-5, stall_rate_multi=1.5 * stalls, stall_s_multi=2e-5,
                                stall_per_exchange_multi=0.04 if stalls else None,  # several holders: per exchange
                                fetch_beta_Bps=2e10 if stalls else None, fetch_bytes_serial=ports,
                                chunk_bytes=8192 if stalls else None, chunk_s=4e-6 if stalls else 0.0,
                                cold_idle=((0.01, 2e-5), (0.1, 3e-4)) if stalls else ())  # fmt: skip
    compute = model.profile.compute
    compute = dataclasses.replace(compute, gather=dataclasses.replace(compute.gather, reply_s=7e-5 if stalls else 0.0),
                                  merge=dataclasses.replace(compute.merge, per_moved_token_s=4e-9 if stalls else 0.0,
                                                            first_step_excess=0.12 if stalls else 0.0),
                                  local_attention=dataclasses.replace(compute.local_attention,
                                                                      first_step_excess=0.05 if stalls else 0.0),
                                  attention=dataclasses.replace(compute.attention, first_step_excess=0.15 if stalls else 0.0,
                                                                parallel_excess=0.08 if stalls else 0.0,
                                                                first_step_idle=((0.01, 0.1), (0.1, 0.3)) if stalls else ()))
    model = dataclasses.replace(model, profile=dataclasses.replace(model.profile, paths={**model.profile.paths, "ibgda": ibgda},
                                                                   compute=compute))  # fmt: skip
    idle = 0.04 if stalls else None  # the holders idle 40 ms: a wake-up and a first step between the measured points
    request = uniform_request(64, 512, holders, 27, steps=3, offset=9, idle_s=idle)
    shape = Shape(64, 512, 27, 3, holders, False, 9, idle_s=idle)
    expected = model.primitive(prim, shape, ibgda)
    assert float(uniform_phases(model, request, prim).total) == pytest.approx(float(expected.total))
    if stalls and prim == "route":  # 81 exchanges of tens of us at thousands of stalls per second: some stall
        calm = dataclasses.replace(ibgda, stall_rate=0.0, stall_rate_multi=0.0, stall_per_exchange_multi=None)
        assert float(expected.probe) > float(model.route(shape, calm).probe)
    if stalls and prim == "route":  # the idle holders wake slower than calibration's back-to-back ones
        unknown = model.route(dataclasses.replace(shape, idle_s=None), ibgda)
        assert float(expected.probe - unknown.probe) == pytest.approx(ibgda.cold_at(0.04) - ibgda.cold_s)
        assert float(expected.compute) > float(unknown.compute)
    if cap is not None and prim == "route" and holders > 1:  # the cap binds: less serial compute than uncapped
        uncapped = dataclasses.replace(ibgda, serial_cap_s=None)
        assert float(expected.total) < float(model.primitive(prim, shape, uncapped).total)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4000), tokens=st.lists(st.integers(1, 6000), min_size=1, max_size=5),
       steps=st.integers(1, 40), sparse=st.booleans(), offset=st.sampled_from([0, 1000]))
def test_plan_is_never_worse_than_a_uniform_assignment(model, rows, tokens, steps, sparse, offset):
    demands = tuple(HolderDemand(i, t) for i, t in enumerate(tokens))
    request = Request(rows, 27, demands, steps, sparse, offset)
    p = plan(model, request)
    for prim in PRIMITIVES:
        assert p.total_s <= float(uniform_phases(model, request, prim).total) * (1 + 1e-12)
    assert p.total_s == pytest.approx(float(combine(model, request, p.holders).total))
    assert {h.holder for h in p.holders} == set(range(len(tokens)))


def test_mixed_plan_routes_small_holders_and_fetches_big_reused_ones(model):
    # one holder with a tiny chunk reused many steps (fetch it once), one with a huge chunk (route to it)
    request = Request(64, 27, (HolderDemand(0, 16), HolderDemand(1, 60000)), steps=20)
    p = plan(model, request)
    assert p.strategy == "mixed"
    assert p.primitive_of(0) != "route" and p.primitive_of(1) == "route"


def test_route_and_fetch_pick_their_own_fabric(two_path_model):
    request = uniform_request(16, 2048, 1, 27)
    options = holder_options(two_path_model, request, request.demands[0])
    assert options["route"][0] == "nvlink4"  # small messages: lower probe latency wins
    assert options["fetch"][0] == "ibgda"  # 63 MB: the higher rate wins


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(1, 20000), min_size=1, max_size=30), seed=st.integers(0, 2**32 - 1),
       steps=st.integers(1, 64), sparse=st.booleans(), offset=st.sampled_from([0, 77]))
def test_batched_decisions_equal_per_request_plans(two_path_model, rows, seed, steps, sparse, offset):
    tokens = np.random.default_rng(seed).integers(1, 8192, size=len(rows))
    batch = decide_batch(two_path_model, np.array(rows), tokens, 27, steps, sparse, offset)
    for i, (r, t) in enumerate(zip(rows, tokens)):
        p = plan(two_path_model, uniform_request(r, int(t), 1, 27, steps, sparse, offset))
        assert PRIMITIVES[batch.choice[i]] == p.strategy
        assert batch.total_s[i] == pytest.approx(p.total_s)
        if p.strategy != "local":
            assert batch.paths[(batch.route_path if p.strategy == "route" else batch.fetch_path)[i]] == p.holders[0].path


def test_bad_requests_rejected():
    with pytest.raises(QrouteError, match="holder 1 appears twice"):
        Request(4, 2, (HolderDemand(1, 5), HolderDemand(1, 6)))
    with pytest.raises(QrouteError, match="no holder demands"):
        Request(4, 2, ())
    with pytest.raises(QrouteError, match="tokens on holder 3=0"):
        HolderDemand(3, 0)
    with pytest.raises(QrouteError, match="holders=0"):
        uniform_request(4, 4, 0, 2)


def _learned(route=(1.0, 1.0, 1.0), fetch=(1.0, 1.0, 1.0), local=(1.0, 1.0, 1.0)):
    """An online scale that has seen each primitive run at these measured / predicted ratios (network, compute,
    merge)."""
    from qroute.cost.online import GROUPS, OnlineScale

    scale = OnlineScale()
    for key, ratios in (("route", route), ("fetch", fetch), ("local", local)):
        scale.observe(key, dict.fromkeys(GROUPS, 1.0), dict(zip(GROUPS, ratios)))
    return scale


def test_an_online_scale_that_learned_nothing_plans_as_the_profile(model):
    from qroute.cost.online import OnlineScale

    online = dataclasses.replace(model, online=OnlineScale())
    for request in (uniform_request(64, 512, 3, 27, steps=3, offset=9), uniform_request(4000, 128, 2, 27, sparse=True)):
        a, b = plan(model, request), plan(online, request)
        assert a.strategy == b.strategy and float(a.phases.total) == pytest.approx(float(b.phases.total))


@pytest.mark.parametrize("prim", PRIMITIVES)
def test_a_uniform_plan_is_rescaled_by_its_primitives_factors(model, prim):
    factors = {"route": (1.8, 1.3, 0.7), "fetch": (1.2, 0.9, 1.5), "local": (1.0, 1.4, 1.1)}
    online = dataclasses.replace(model, online=_learned(**factors))
    request = uniform_request(64, 512, 3, 27, steps=3, offset=9)
    static, scaled = uniform_phases(model, request, prim), uniform_phases(online, request, prim)
    n, c, m = factors[prim]
    assert float(scaled.probe + scaled.transfer + scaled.ret) == pytest.approx(float(static.probe + static.transfer + static.ret) * n)
    assert float(scaled.compute) == pytest.approx(float(static.compute) * c)
    assert float(scaled.merge) == pytest.approx(float(static.merge) * m)


def test_a_slower_route_learned_online_turns_a_close_choice_into_fetch(model):
    request = next(uniform_request(r, 2048, 1, 27) for r in range(1, 4000)
                   if plan(model, uniform_request(r, 2048, 1, 27)).strategy == "fetch")  # the smallest fetch
    close = uniform_request(request.rows - 1, 2048, 1, 27)  # just below the break-even: route
    assert plan(model, close).strategy == "route"
    slow = dataclasses.replace(model, online=_learned(route=(2.0, 2.0, 2.0)))
    assert plan(slow, close).strategy == "fetch"
    batch = decide_batch(slow, np.array([close.rows]), np.array([2048]), 27)
    assert PRIMITIVES[batch.choice[0]] == "fetch"


def test_the_executor_learns_uniform_batches_against_the_static_prediction(model):
    from types import SimpleNamespace

    from qroute.cost.online import OnlineScale
    from qroute.runtime.executor import Executor, predicted_groups

    online = dataclasses.replace(model, online=OnlineScale())
    executor = SimpleNamespace(cost=online)
    request = uniform_request(64, 512, 2, 27, steps=3)
    route = plan(dataclasses.replace(model, online=_learned(route=(1.5, 1.5, 1.5))), request)  # planned while scaled
    static = predicted_groups(combine(model, request, route.holders))
    measured = {g: 2 * static[g] for g in ("network_s", "compute_s", "merge_s")}
    for _ in range(3):
        Executor.learn(executor, [SimpleNamespace(plan=route)], measured)
    assert online.online.factor(route.strategy, "network_s") == pytest.approx(2.0)  # against the static, not the scaled
    mixed = dataclasses.replace(route, holders=(route.holders[0], dataclasses.replace(route.holders[1], primitive="local")))
    Executor.learn(executor, [SimpleNamespace(plan=mixed)], {g: 9.0 for g in measured})  # mixed: nothing learned
    assert online.online.factor("local", "compute_s") == 1.0


@pytest.mark.parametrize("sessions", [1, 3])
def test_a_batch_pays_the_merge_after_the_exchange_once_per_layer(model, sessions):
    """Sessions routed to one holder together: only the first merge of each layer follows the exchange directly."""
    from qroute.planner import combine_batch, forced_plan

    def merge_s(after):
        merge = dataclasses.replace(model.profile.compute.merge, after_route_s=after)
        m = dataclasses.replace(model, profile=dataclasses.replace(model.profile, compute=dataclasses.replace(
            model.profile.compute, merge=merge)))  # fmt: skip
        request = Request(64, 27, (HolderDemand(1, 512, ("ibgda",), 512),), 3, False, 9)
        return float(combine_batch(m, [(request, forced_plan(m, request, "route").holders)] * sessions).merge)

    assert merge_s(1e-4) - merge_s(0.0) == pytest.approx(27 * 3 * 1e-4)


def test_route_messages_pay_their_chunks(model):
    """A route exchange's rows and states each pay `chunk_s` per chunk beyond the first, as fetches do."""
    path = model.profile.path("ibgda")
    chunked = dataclasses.replace(path, chunk_bytes=4096, chunk_s=1e-5)
    shape = Shape(64, 512, 27, 3, 1, False, 9)
    extra = float(model.route(shape, chunked).total - model.route(shape, path).total)
    c = model.coef
    per_exchange = chunked.chunk_extra_s(64 * c.q_row_bytes) + chunked.chunk_extra_s(64 * c.o_row_bytes)
    assert per_exchange > 0 and extra == pytest.approx(27 * 3 * per_exchange)
