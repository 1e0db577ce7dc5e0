"""The engine against closed forms: the planner's prediction uncontended, a holder's queue, a fetch ahead of a route."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.cost import CostModel, load_profile
from qroute.cost.profile import AttentionCoeffs
from qroute.geometry import preset
from qroute.planner import HolderDemand, Request, combine_batch, forced_plan, plan
from qroute.sim import Layout, SimConfig, SimRequest, Topology, place, prepare, simulate
from qroute.sim.stats import LogHistogram

PROFILE = load_profile("published-h100")
GEOMETRY = preset("deepseek-v2-lite")
MODEL = CostModel(GEOMETRY, PROFILE)
L, HEADS = GEOMETRY.layers, GEOMETRY.heads


def config(requests, layout, topology, **kw):
    kw.setdefault("price_task_prefill", False)
    return SimConfig(topology=topology, requests=tuple(requests), layout=layout, **kw)


def planned(policy, request):
    return forced_plan(MODEL, request, policy.split("-")[1]) if policy.startswith("always") else plan(MODEL, request)


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(["always-route", "always-fetch", "predicate"]),
    chunk_blocks=st.integers(1, 64),
    steps=st.integers(1, 40),
    offset=st.integers(0, 512),
    step_tokens=st.integers(1, 8),
    inter=st.booleans(),
    sparse=st.booleans(),
)
def test_one_requester_one_holder_matches_the_plan(policy, chunk_blocks, steps, offset, step_tokens, inter, sparse):
    layout = Layout.uniform(1, chunk_blocks, 64)
    blocks = tuple(range(0, chunk_blocks, 2)) if sparse else range(chunk_blocks)
    req = SimRequest(0, 0.0, 0, blocks, steps, offset, step_tokens, sparse)
    topology = Topology(nodes=2, gpus_per_node=1, intra=None) if inter else Topology(nodes=1, gpus_per_node=2, inter=None)
    out = simulate(config([req], layout, topology, requesters=1, policies=(policy,)))["policies"][policy]
    path = topology.path(0, 1)
    demand = HolderDemand(1, len(blocks) * 64, (path,), (max(blocks) + 1) * 64)
    want = planned(policy, Request(step_tokens * HEADS, L, (demand,), steps, sparse, offset))
    assert out["session_steps"] == steps
    assert out["mean_s"] * steps == pytest.approx(want.total_s, rel=1e-9)
    assert out["throughput"] == pytest.approx(steps * step_tokens / want.total_s, rel=1e-9)


def two_sessions_on_three_holders(parallel_excess=0.0, after_route_s=0.0, merge_group_s=None, **nvlink_fields):
    """Two sessions decoded together, each spread over three holders (hashed placement), always routed: the
    simulated seconds of one step, the sessions as the planner sees them, and the profile."""
    nvlink = dataclasses.replace(PROFILE.path("nvlink4"), **nvlink_fields)
    attention = dataclasses.replace(PROFILE.compute.attention, parallel_excess=parallel_excess)
    merge = dataclasses.replace(PROFILE.compute.merge, after_route_s=after_route_s, group_s=merge_group_s)
    profile = dataclasses.replace(PROFILE, paths={**PROFILE.paths, "nvlink4": nvlink},
                                  compute=dataclasses.replace(PROFILE.compute, attention=attention, merge=merge))
    layout = Layout.uniform(2, 16, 64)
    reqs = [SimRequest(0, 0.0, c, range(16 * c, 16 * c + 16), 6, 100) for c in (0, 1)]
    cfg = config(reqs, layout, Topology(nodes=1, gpus_per_node=4, inter=None), requesters=1, concurrency=2,
                 placement="hashed", policies=("always-route",), profile=profile)  # fmt: skip
    out = simulate(cfg)["policies"]["always-route"]
    copies = place(layout, (1, 2, 3), "hashed")
    sessions = []
    for r in reqs:
        by = {}
        for b in r.blocks:
            by.setdefault(copies[b][0], []).append(b)
        demands = tuple(HolderDemand(h, len(b) * 64, ("nvlink4",), (max(b) - r.blocks[0] + 1) * 64) for h, b in sorted(by.items()))
        request = Request(HEADS, L, demands, 6, True, 100)  # hashed: each holder's run is scattered
        sessions.append((request, forced_plan(CostModel(GEOMETRY, profile), request, "route").holders))
    assert len(sessions[0][0].demands) > 1
    return out["mean_s"], sessions, profile


@pytest.mark.parametrize("ports, serial, cap, parallel", [(1.0, 0.0, None, 0.0), (0.3, 0.5, None, 0.0), (0.3, 0.5, 2e-6, 0.0),
                                                          (1.0, 0.0, None, 0.2)])  # fmt: skip
def test_many_holders_and_a_batch_match_combine_batch(ports, serial, cap, parallel):
    """Every step as `combine_batch` prices it (the slowest of three holders at once 20% slower per extra holder)."""
    step_s, sessions, profile = two_sessions_on_three_holders(parallel, bytes_serial=ports, holder_serial=serial,
                                                              serial_cap_s=cap)  # fmt: skip
    assert step_s * 6 == pytest.approx(float(combine_batch(CostModel(GEOMETRY, profile), sessions).total), rel=1e-9)
    if parallel:
        assert step_s > two_sessions_on_three_holders(bytes_serial=ports, holder_serial=serial, serial_cap_s=cap)[0]


def test_chunked_messages_and_one_merge_after_the_exchange_match_combine_batch():
    """Route messages in chunks of 2 KB (each beyond the first 3 us) and a merge after the exchange 20 us dearer:
    simulated as `combine_batch` prices them, the chunks paid, the merge's extra once per layer for both sessions."""
    plain, _, _ = two_sessions_on_three_holders()
    step_s, sessions, profile = two_sessions_on_three_holders(after_route_s=2e-5, chunk_bytes=2048, chunk_s=3e-6)
    assert step_s * 6 == pytest.approx(float(combine_batch(CostModel(GEOMETRY, profile), sessions).total), rel=1e-9)
    merged, _, _ = two_sessions_on_three_holders(after_route_s=2e-5)
    assert merged - plain == pytest.approx(L * 2e-5, rel=1e-6)  # once per layer, not once per session
    assert step_s > merged


def test_a_batchs_further_merges_match_combine_batch():
    """profile/13: with the merge of a batch's further request at `group_s` (here half of `fixed_s`), the second
    session's merge in each layer is simulated as `combine_batch` prices it, cheaper by the difference."""
    plain, _, _ = two_sessions_on_three_holders()
    step_s, sessions, profile = two_sessions_on_three_holders(merge_group_s=PROFILE.compute.merge.fixed_s / 2)
    assert step_s * 6 == pytest.approx(float(combine_batch(CostModel(GEOMETRY, profile), sessions).total), rel=1e-9)
    assert plain - step_s == pytest.approx(L * PROFILE.compute.merge.fixed_s / 2, rel=1e-6)


def test_stalls_are_simulated_at_their_mean_per_exchange():
    """A path that stalls 2e4 times per second of exchange by 10 us: each layer's exchange pays 0.2 of its own
    seconds more (the mean; the planner prices the median request's whole count instead)."""
    from qroute.planner import _routed_per_layer

    plain_s, sessions, profile = two_sessions_on_three_holders()
    stalled_s, _, _ = two_sessions_on_three_holders(stall_rate_multi=2e4, stall_s_multi=1e-5)
    exchange_s = float(_routed_per_layer(CostModel(GEOMETRY, profile), sessions).total)
    assert stalled_s - plain_s == pytest.approx(L * 2e4 * 1e-5 * exchange_s, rel=1e-9)
    counted_s, _, _ = two_sessions_on_three_holders(stall_per_exchange_multi=0.3, stall_s_multi=1e-5)  # profile/10
    assert counted_s - plain_s == pytest.approx(L * 0.3 * 1e-5, rel=1e-9)


@pytest.mark.parametrize("excess", [0.0, 0.25])
def test_a_routed_requests_first_step_pays_the_holders_cold_caches_once(excess):
    """The holder attends 25% longer in a request's first decode step: the simulated request pays it once per layer,
    as the plan prices it, whatever its steps."""
    attention = dataclasses.replace(PROFILE.compute.attention, first_step_excess=excess)
    profile = dataclasses.replace(PROFILE, compute=dataclasses.replace(PROFILE.compute, attention=attention))
    model, layout = CostModel(GEOMETRY, profile), Layout.uniform(1, 8, 64)
    topology = Topology(nodes=1, gpus_per_node=2, inter=None)
    for steps in (1, 5):
        req = SimRequest(0, 0.0, 0, range(8), steps, 64)
        out = simulate(config([req], layout, topology, requesters=1, policies=("always-route",), profile=profile))
        demand = HolderDemand(1, 8 * 64, (topology.path(0, 1),), 8 * 64)
        want = forced_plan(model, Request(HEADS, L, (demand,), steps, False, 64), "route")
        assert out["policies"]["always-route"]["mean_s"] * steps == pytest.approx(want.total_s, rel=1e-9)
        assert want.phases.compute == pytest.approx((steps + excess) * L * model.attention_s(HEADS, 8 * 64), rel=1e-9)


@pytest.mark.parametrize("gap", [0.004, 0.05, 0.5])
def test_a_holder_idle_between_requests_wakes_as_the_plan_prices_it(gap):
    """A profile that measured the wake-up and the first step after idle times: a second request routed to the same
    holder `gap` seconds after the first one ended (paced arrivals) pays the wake-up and first step the plan prices for
    that idle time; the first, to a holder never asked, pays the unknown ones (`cold_s`, `first_step_excess`)."""
    nvlink = dataclasses.replace(PROFILE.path("nvlink4"), cold_s=2e-5, cold_idle=((0.01, 1e-5), (0.1, 2e-4), (1.0, 6e-4)))
    attention = dataclasses.replace(PROFILE.compute.attention, first_step_excess=0.1, first_step_idle=((0.01, 0.05), (1.0, 0.4)))
    profile = dataclasses.replace(PROFILE, paths={**PROFILE.paths, "nvlink4": nvlink},
                                  compute=dataclasses.replace(PROFILE.compute, attention=attention))
    model, layout, steps = CostModel(GEOMETRY, profile), Layout.uniform(1, 8, 64), 3
    topology = Topology(nodes=1, gpus_per_node=2, inter=None)
    demand = HolderDemand(1, 8 * 64, (topology.path(0, 1),), 8 * 64)
    first = forced_plan(model, Request(HEADS, L, (demand,), steps, False, 64), "route")
    reqs = [SimRequest(0, 0.0, 0, range(8), steps, 64), SimRequest(0, first.total_s + gap, 0, range(8), steps, 64)]
    cfg = config(reqs, layout, topology, requesters=1, concurrency=1, paced=True, policies=("always-route",), profile=profile)
    out = simulate(cfg)["policies"]["always-route"]
    idle = dataclasses.replace(demand, idle_s=gap)
    second = forced_plan(model, Request(HEADS, L, (idle,), steps, False, 64), "route")
    assert out["mean_s"] * 2 * steps == pytest.approx(first.total_s + second.total_s, rel=1e-9)
    assert (second.total_s > first.total_s) == (gap > 0.02)  # longer than ~20 ms idle: slower than the unknown prices


def test_the_simulators_decisions_round_the_idle_time_to_a_power_of_two():
    from qroute.sim.engine import _rounded

    assert _rounded(None) is None and _rounded(0.0) == 2.0**-20 and _rounded(0.05) == 2.0**-4 and _rounded(3.0) == 4.0


def two_on_one_holder(attention_flops):
    """Requesters 0 and 1 each route one long request to holder 2; returns (simulated, T, s, steps)."""
    slow = dataclasses.replace(PROFILE.compute, attention=AttentionCoeffs(3e-6, 3e12, attention_flops))
    profile = dataclasses.replace(PROFILE, compute=slow)
    layout, steps = Layout.uniform(1, 32, 64), 20
    reqs = [SimRequest(a, 0.0, 0, range(32), steps, 64) for a in (0, 1)]
    cfg = config(reqs, layout, Topology(nodes=1, gpus_per_node=3, inter=None), requesters=2, profile=profile,
                 concurrency=1, policies=("always-route",))  # fmt: skip
    out = simulate(cfg)["policies"]["always-route"]
    model = CostModel(GEOMETRY, profile)
    request = Request(HEADS, L, (HolderDemand(2, 32 * 64, ("nvlink4",), 32 * 64),), 1, False, 64)
    T = forced_plan(model, request, "route").total_s / L  # one layer, uncontended
    s = model.attention_s(HEADS, 32 * 64)  # the holder's share of it
    return out, T, s, steps


def test_two_requesters_below_saturation_do_not_wait():
    out, T, s, steps = two_on_one_holder(660e12)
    assert 2 * s < T
    assert out["mean_s"] == pytest.approx(L * T, rel=1e-9)
    assert out["holder_utilisation"]["2"] == pytest.approx(2 * s / T, rel=1e-9)


def test_two_requesters_saturating_a_holder_queue_for_it():
    """Holder-bound (s > T - s): from its second train on, every step runs at the holder's round 2s."""
    out, T, s, n = two_on_one_holder(2e12)
    assert s > T - s
    first = L * T + (n - 1) * 2 * L * s  # requester 0: its first step saw an idle holder
    second = n * 2 * L * s  # requester 1: queued behind requester 0's train from the start
    assert out["mean_s"] == pytest.approx((first + second) / (2 * n), rel=1e-9)
    assert out["makespan_s"] == pytest.approx(max(first, second), rel=1e-9)
    assert out["holder_utilisation"]["2"] == pytest.approx(2 * n * L * s / max(first, second), rel=1e-9)


def test_a_fetch_on_the_holder_port_delays_a_route_behind_it():
    """Requester 0 fetches the chunk (long reuse), requester 1 routes one step to the same holder at t=0."""
    layout = Layout.uniform(1, 32, 64)
    reqs = [SimRequest(0, 0.0, 0, range(32), 200, 0), SimRequest(1, 0.0, 0, range(32), 1, 0)]
    cfg = config(reqs, layout, Topology(nodes=1, gpus_per_node=3, inter=None), requesters=2, policies=("predicate",))
    prepared = prepare(cfg)
    engine = prepared.engine("predicate")
    raw = engine.run()
    assert raw["choices"] == {"route": 1, "fetch": 1, "local": 0, "cache": 0}
    path = PROFILE.path("nvlink4")
    nbytes = MODEL.fetch_bytes(32 * 64, L)
    fetch_end = float(path.fetch_alpha(nbytes)) + nbytes / path.beta(nbytes)
    route = Request(HEADS, L, (HolderDemand(2, 32 * 64, ("nvlink4",), 32 * 64),), 1, False, 0)
    assert engine.requesters[1].finish == pytest.approx(fetch_end + plan(MODEL, route).total_s, rel=1e-9)


def test_holder_capacity_lifts_the_saturated_round():
    out1, T, s, n = two_on_one_holder(2e12)
    slow = dataclasses.replace(PROFILE.compute, attention=AttentionCoeffs(3e-6, 3e12, 2e12))
    layout = Layout.uniform(1, 32, 64)
    reqs = [SimRequest(a, 0.0, 0, range(32), n, 64) for a in (0, 1)]
    cfg = config(reqs, layout, Topology(nodes=1, gpus_per_node=3, inter=None, holder_capacity=2), requesters=2,
                 profile=dataclasses.replace(PROFILE, compute=slow), concurrency=1, policies=("always-route",))  # fmt: skip
    out2 = simulate(cfg)["policies"]["always-route"]
    assert out2["mean_s"] == pytest.approx(L * T, rel=1e-9)  # two servers: no queue for two trains
    assert out2["mean_s"] < out1["mean_s"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=500))
def test_log_histogram_percentiles_within_a_bin(values):
    import numpy as np

    h = LogHistogram()
    for v in values:
        h.add(v)
    assert h.mean == pytest.approx(sum(values) / len(values), rel=1e-9)
    for q in (50, 99):
        lo, hi = np.percentile(values, q, method="inverted_cdf"), np.percentile(values, q, method="higher")
        assert min(values) <= h.percentile(q) <= max(values)
        assert lo / 1.011 <= h.percentile(q) <= hi * 1.011
    assert h.cdf()[-1][1] == 1.0


@pytest.mark.parametrize("inter", [False, True])
def test_a_fetch_at_the_paths_own_fetch_rate_is_simulated_as_planned(inter):
    """Both paths fetch at a third of their route rate: the simulated fetch is the planned one, and slower."""
    paths = {n: dataclasses.replace(p, fetch_beta_Bps=p.beta_Bps / 3) for n, p in PROFILE.paths.items()}
    profile = dataclasses.replace(PROFILE, paths=paths)
    layout, req = Layout.uniform(1, 16, 64), SimRequest(0, 0.0, 0, range(16), 3, 64)
    topology = Topology(nodes=2, gpus_per_node=1, intra=None) if inter else Topology(nodes=1, gpus_per_node=2, inter=None)
    cfg = config([req], layout, topology, requesters=1, policies=("always-fetch",), profile=profile)
    out = simulate(cfg)["policies"]["always-fetch"]
    demand = HolderDemand(1, 16 * 64, (topology.path(0, 1),), 16 * 64)
    want = forced_plan(CostModel(GEOMETRY, profile), Request(HEADS, L, (demand,), 3, False, 64), "fetch")
    assert out["mean_s"] * 3 == pytest.approx(want.total_s, rel=1e-9)
    plain = simulate(config([req], layout, topology, requesters=1, policies=("always-fetch",)))["policies"]["always-fetch"]
    assert out["mean_s"] > plain["mean_s"]


@pytest.mark.parametrize("ports, chunk", [(1.0, None), (0.3, None), (0.0, None), (0.3, 1 << 16)])
def test_a_fetch_from_three_holders_at_once_moves_its_bytes_as_planned(ports, chunk):
    """One session over three holders (hashed placement), always fetched, the other holders' bytes `ports`
    serialised after the largest's (and each reply moved in 64 KB chunks, 20 us per hand-off): the simulated request
    is the planned one; overlapping bytes make it faster."""
    def run(ports):
        nvlink = dataclasses.replace(PROFILE.path("nvlink4"), fetch_bytes_serial=ports, chunk_bytes=chunk,
                                     chunk_s=2e-5 if chunk else 0.0)  # fmt: skip
        merge = dataclasses.replace(PROFILE.compute.merge, per_moved_token_s=5e-9 if chunk else 0.0,
                                    first_step_excess=0.1 if chunk else 0.0)
        local = dataclasses.replace(PROFILE.compute.local_attention, first_step_excess=0.04 if chunk else 0.0)
        profile = dataclasses.replace(PROFILE, paths={**PROFILE.paths, "nvlink4": nvlink},
                                      compute=dataclasses.replace(PROFILE.compute, merge=merge, local_attention=local))
        layout = Layout.uniform(1, 16, 64)
        req = SimRequest(0, 0.0, 0, range(16), 3, 100)
        cfg = config([req], layout, Topology(nodes=1, gpus_per_node=4, inter=None), requesters=1, placement="hashed",
                     policies=("always-fetch",), profile=profile)  # fmt: skip
        copies = place(layout, (1, 2, 3), "hashed")
        by = {}
        for b in req.blocks:
            by.setdefault(copies[b][0], []).append(b)
        demands = tuple(HolderDemand(h, len(b) * 64, ("nvlink4",), (max(b) + 1) * 64) for h, b in sorted(by.items()))
        want = forced_plan(CostModel(GEOMETRY, profile), Request(HEADS, L, demands, 3, True, 100), "fetch")
        return simulate(cfg)["policies"]["always-fetch"]["mean_s"] * 3, want.total_s, len(demands)

    simulated, planned_s, holders = run(ports)
    assert holders == 3 and simulated == pytest.approx(planned_s, rel=1e-9)
    if ports < 1:
        assert simulated < run(1.0)[0]
