"""The compute fits recover known coefficients from a synthetic trace with noise and stalls, and price a merge that
follows a route exchange, or an attention over moved KV, apart from the others."""

from dataclasses import replace

import numpy as np
import pytest

from qroute.calibration.insitu_compute import fit_compute_from_trace, requester_first_step
from qroute.cost import CostModel, load_profile
from qroute.cost.model import Shape
from qroute.cost.profile import AttentionCoeffs, Compute, GatherCoeffs, MergeCoeffs, ReprefillCoeffs, SpliceCoeffs
from qroute.geometry import preset

GEOMETRY = preset("deepseek-v2-lite")
TRUE = Compute(
    attention=AttentionCoeffs(3e-4, 8e9, 6e10, per_row_s=1.5e-6), local_attention=AttentionCoeffs(1e-4, 9e9, 8e10, per_row_s=4e-7),
    merge=MergeCoeffs(8e-5, 4e9, after_route_s=4e-5, per_moved_token_s=5e-8), splice=SpliceCoeffs(1.2e-4, 0.0, 1.5e-7),
    gather=GatherCoeffs(5e-5, 0.0, 2e-8), reprefill=ReprefillCoeffs(2e-3, 5e10, 3e10),
)  # fmt: skip


def synthetic_compute_trace(seed: int, group_s: float | None = None) -> list[dict]:
    """Every record kind the fit reads, 5 samples per shape with 1% noise and one stall in each shape (4 ms, or 3x the
    sample where that is longer: a stall is well beyond a shape's `tail_mean` cap of 3x its median); with
    `group_s`, messages carrying 3 requests' rows too (each beyond the first paying `group_s` instead of `fixed_s`)."""
    attention = replace(TRUE.attention, group_s=group_s)
    model = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=replace(TRUE, attention=attention)))
    rng = np.random.default_rng(seed)
    trace = []

    def add(kind, seconds, field="seconds", **shape):
        for i in range(5):
            t = seconds * (1 + rng.normal(0, 0.01)) + (max(4e-3, 3 * seconds) if i == 2 else 0.0)
            trace.append({"kind": kind, field: t, **shape})

    for rows in (16, 32, 128, 384):
        for tokens in (32, 160, 480):
            add("route", model.attention_s(rows, tokens), "holder_compute_s", groups=[[rows, tokens]])
            add("moved", model.attention_s(rows, tokens, local=True), rows=rows, tokens=tokens)
        add("merge", model.merge_s(rows, 2, routed=True), rows=rows, partials=2, routed=True, moved=0)
        for moved in (32, 160, 480):  # after an attention over moved KV: the more tokens, the colder the caches
            add("merge", model.merge_s(rows, 2, moved=moved), rows=rows, partials=2, routed=False, moved=moved)
    for tokens in (32, 96, 480):
        add("splice", model.splice_s(tokens, 4), tokens=tokens, layers=4)
        add("fetch", model.gather_s(tokens, 1, 4), "holder_compute_s", tokens=tokens, layers=4, scattered=True)
        add("local", model.reprefill_s(tokens, GEOMETRY.layers), tokens=tokens)
    add("route", attention.batched_s(2 * model.attention_s(16, 64), 2), "holder_compute_s", groups=[[16, 64], [16, 64]])
    for rows, tokens in ((32, 32), (128, 480), (16, 160)) if group_s is not None else ():  # batches of 3
        add("route", attention.batched_s(3 * model.attention_s(rows, tokens), 3), "holder_compute_s", groups=[[rows, tokens]] * 3)
    return trace


def test_compute_coefficients_are_recovered_with_noise_and_stalls():
    fits: dict = {}
    fitted = fit_compute_from_trace(synthetic_compute_trace(0), GEOMETRY, GEOMETRY.coefficients(), fits)
    true = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=TRUE))
    got = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=fitted))
    for rows, tokens in ((24, 100), (256, 400)):  # shapes between the trace's
        assert got.attention_s(rows, tokens) == pytest.approx(true.attention_s(rows, tokens), rel=0.03)
        assert got.attention_s(rows, tokens, local=True) == pytest.approx(true.attention_s(rows, tokens, local=True), rel=0.03)
        for routed, moved in ((False, 100), (False, 400), (True, 0)):
            assert got.merge_s(rows, 3, routed, moved) == pytest.approx(true.merge_s(rows, 3, routed, moved), rel=0.03)
    assert fitted.merge.after_route_s == pytest.approx(4e-5, abs=4e-6)
    assert fitted.merge.per_moved_token_s == pytest.approx(5e-8, rel=0.15)
    assert fitted.attention.per_row_s == pytest.approx(1.5e-6, rel=0.15)  # each row's own cost, apart from its keys
    assert fitted.local_attention.per_row_s == pytest.approx(4e-7, rel=0.15)
    assert got.splice_s(200, 4) == pytest.approx(true.splice_s(200, 4), rel=0.03)
    assert got.gather_s(200, 1, 4) == pytest.approx(true.gather_s(200, 1, 4), rel=0.03)
    assert got.reprefill_s(256, GEOMETRY.layers) == pytest.approx(true.reprefill_s(256, GEOMETRY.layers), rel=0.03)
    assert len(fits["merge_after_route"]["excess_s"]) == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_a_frequent_moderate_tail_is_priced_at_its_mean(seed):
    """As on the dev VM: 20% of each shape's records 1.3x longer (the rest 1% noise) and one long stall in 20. A
    request sums many merges and attentions over moved KV, so its phase grows by the tail's mean (1.06x), which a
    median (1.0x) leaves out; the stall is left out. A splice or re-prefill comes once per request: its median."""
    rng = np.random.default_rng(seed)
    trace = []
    for r in synthetic_compute_trace(seed):
        if r["kind"] in ("moved", "merge", "splice", "local") and not r.get("routed"):
            base = r["seconds"]
            for i in range(20):
                t = base * (1.3 if i % 5 == 0 else 1.0) * (1 + rng.normal(0, 0.01)) + (max(4e-3, 3 * base) if i == 7 else 0.0)
                trace.append({**r, "seconds": t})
        else:
            trace.append(r)
    fitted = fit_compute_from_trace(trace, GEOMETRY, GEOMETRY.coefficients(), {})
    true = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=TRUE))
    got = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=fitted))
    for rows, tokens in ((24, 100), (256, 400)):
        assert got.attention_s(rows, tokens, local=True) == pytest.approx(1.06 * true.attention_s(rows, tokens, local=True), rel=0.02)
        assert got.merge_s(rows, 3, False, tokens) == pytest.approx(1.06 * true.merge_s(rows, 3, False, tokens), rel=0.02)
        assert got.attention_s(rows, tokens) == pytest.approx(true.attention_s(rows, tokens), rel=0.03)  # no tail there
    assert got.splice_s(200, 4) == pytest.approx(true.splice_s(200, 4), rel=0.03)
    assert got.reprefill_s(256, GEOMETRY.layers) == pytest.approx(true.reprefill_s(256, GEOMETRY.layers), rel=0.03)


def test_a_trace_without_routed_merges_prices_no_extra_and_the_route_merge_carries_it():
    trace = [r for r in synthetic_compute_trace(1) if not r.get("routed")]
    fitted = fit_compute_from_trace(trace, GEOMETRY, GEOMETRY.coefficients(), {})
    assert fitted.merge.after_route_s == 0.0
    model = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=TRUE))
    path = model.profile.path(model.profile.default_paths[0])
    shape = Shape(rows=64, tokens=512, layers=2, steps=3)
    assert model.route(shape, path).merge == pytest.approx(6 * model.merge_s(64, 2) + 6 * 4e-5)
    assert model.fetch(shape, path).merge == pytest.approx(6 * model.merge_s(64, 2, moved=512))
    assert model.fetch(shape, path).merge - 6 * model.merge_s(64, 2) == pytest.approx(6 * 512 * 5e-8)  # after moved KV


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("merge_excess, moved_excess", [(0.09, 0.04), (0.0, 0.0), (0.25, 0.12)])
def test_the_requesters_first_step_is_read_apart_and_leaves_the_warm_fit_alone(seed, merge_excess, moved_excess):
    """Requests of 4 steps: the first step's attention over moved KV and its merge take `moved_excess` and
    `merge_excess` longer (2% noise, a 4 ms stall in one first step of each shape). The fit reads both excesses and
    prices the later steps as if the first were not there."""
    rng = np.random.default_rng(seed)
    trace = []
    for r in synthetic_compute_trace(seed):
        if r["kind"] in ("moved", "merge") and not r.get("routed"):
            for step in range(4):
                extra = (moved_excess if r["kind"] == "moved" else merge_excess) if step == 0 else 0.0
                t = r["seconds"] * (1 + extra) * (1 + rng.normal(0, 0.02))
                trace.append({**r, "seconds": t, "first_step": step == 0})
        else:
            trace.append(r)
    for r in [r for r in trace if r.get("first_step")][::9]:
        r["seconds"] += 4e-3
    fits: dict = {}
    fitted = fit_compute_from_trace(trace, GEOMETRY, GEOMETRY.coefficients(), fits)
    assert fitted.merge.first_step_excess == pytest.approx(merge_excess, abs=0.015)
    assert fitted.local_attention.first_step_excess == pytest.approx(moved_excess, abs=0.015)
    true = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=TRUE))
    got = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=fitted))
    for rows, tokens in ((24, 100), (256, 400)):  # the warm steps' fit is the true one, first steps or not
        assert got.attention_s(rows, tokens, local=True) == pytest.approx(true.attention_s(rows, tokens, local=True), rel=0.03)
        assert got.merge_s(rows, 3, False, tokens) == pytest.approx(true.merge_s(rows, 3, False, tokens), rel=0.03)
    assert fits["merge_first_step"]["records"] == sum(r["kind"] == "merge" and not r.get("routed") for r in trace) // 4


def test_a_requesters_first_step_excess_is_never_negative_and_zero_without_both_kinds_of_step():
    key = lambda r: (r["rows"],)  # noqa: E731
    warm = [{"rows": 16, "seconds": 1e-4, "first_step": False} for _ in range(5)]
    faster = [{"rows": 16, "seconds": 0.8e-4, "first_step": True} for _ in range(5)]
    assert requester_first_step(warm + faster, key) == 0.0
    assert requester_first_step(warm, key) == 0.0 and requester_first_step(faster, key) == 0.0
    other = [{"rows": 32, "seconds": 2e-4, "first_step": True}]  # a shape never seen warm: not read
    assert requester_first_step(warm + other, key) == 0.0


@pytest.mark.parametrize("seed", [2, 3])
def test_a_batchs_further_requests_fixed_cost_is_recovered(seed):
    """Messages of 3 requests whose further requests pay 1.2e-4 s fixed (the message 3e-4): `group_s`, the rest as
    before; without such messages `group_s` is unknown (None: `fixed_s` per request, as profiles before 11)."""
    fitted = fit_compute_from_trace(synthetic_compute_trace(seed, group_s=1.2e-4), GEOMETRY, GEOMETRY.coefficients(), {})
    assert fitted.attention.group_s == pytest.approx(1.2e-4, rel=0.1)
    assert fitted.attention.fixed_s == pytest.approx(3e-4, rel=0.05)
    alone = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=fitted)).attention_s(64, 256)
    true = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=TRUE)).attention_s(64, 256)
    assert alone == pytest.approx(true, rel=0.03)
    assert fitted.attention.batched_s(4 * alone, 4) == pytest.approx(4 * true - 3 * (3e-4 - 1.2e-4), rel=0.03)
    single = [r for r in synthetic_compute_trace(seed) if len(r.get("groups", [[0]])) == 1]
    assert fit_compute_from_trace(single, GEOMETRY, GEOMETRY.coefficients(), {}).attention.group_s is None


def test_a_batch_to_one_holder_is_priced_with_group_s():
    """`combine_batch`: three requests routed to one holder together pay its `fixed_s` once and `group_s` twice."""
    from qroute.planner import HolderDemand, Request, combine_batch, forced_plan

    def compute(group_s):
        profile = replace(load_profile("published-h100"), compute=replace(TRUE, attention=replace(TRUE.attention, group_s=group_s)))
        model = CostModel(GEOMETRY, profile)
        request = Request(32, 2, (HolderDemand(1, 256, (profile.default_paths[0],), 256),), 1, False, 0)
        return float(combine_batch(model, [(request, forced_plan(model, request, "route").holders)] * 3).compute)

    first = 1 + TRUE.attention.first_step_excess  # one step: the holders' first
    assert compute(None) - compute(1e-4) == pytest.approx(2 * 2 * (3e-4 - 1e-4) * first)


def _requester_batches(seed: int, la_group: float | None, merge_group: float | None) -> list[dict]:
    """`synthetic_compute_trace` plus, where given, batches of 3 fetched requests: their attentions over moved KV and
    merges in each layer, the first at `fixed_s` and the further ones (`nth` 1, 2) at the given `group_s`."""
    trace = synthetic_compute_trace(seed)
    if la_group is None:
        return trace
    compute = replace(TRUE, local_attention=replace(TRUE.local_attention, group_s=la_group),
                      merge=replace(TRUE.merge, group_s=merge_group))  # fmt: skip
    model = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=compute))
    rng = np.random.default_rng(seed + 100)
    for rows, tokens in ((16, 64), (64, 64), (16, 256), (128, 480)):
        for nth in (0, 1, 2):
            for _ in range(5):
                noise = 1 + rng.normal(0, 0.01)
                trace.append({"kind": "moved", "rows": rows, "tokens": tokens, "nth": nth,
                              "seconds": model.attention_s(rows, tokens, local=True, further=nth > 0) * noise})
                trace.append({"kind": "merge", "rows": rows, "partials": 2, "routed": False, "moved": tokens, "nth": nth,
                              "seconds": model.merge_s(rows, 2, moved=tokens, further=nth > 0) * noise})  # fmt: skip
    return trace


@pytest.mark.parametrize("seed", [4, 5])
def test_a_batchs_further_requests_requester_side_fixed_costs_are_recovered(seed):
    """profile/13: in a batch fetched together, each further request's attention over moved KV and its merge pay
    their `group_s` instead of `fixed_s` (here 6e-5 of 1e-4, and 5e-5 of 8e-5); the fit gives both back, and the rest
    as before. Without batches (no `nth` > 0) both stay None: `fixed_s` for every request, as profiles before 13."""
    fitted = fit_compute_from_trace(_requester_batches(seed, 6e-5, 5e-5), GEOMETRY, GEOMETRY.coefficients(), {})
    assert fitted.local_attention.group_s == pytest.approx(6e-5, rel=0.1)
    assert fitted.local_attention.fixed_s == pytest.approx(1e-4, rel=0.05)
    assert fitted.merge.group_s == pytest.approx(5e-5, rel=0.1) and fitted.merge.fixed_s == pytest.approx(8e-5, rel=0.05)
    assert fitted.merge.after_route_s == pytest.approx(4e-5, abs=4e-6)
    plain = fit_compute_from_trace(_requester_batches(seed, None, None), GEOMETRY, GEOMETRY.coefficients(), {})
    assert plain.local_attention.group_s is None and plain.merge.group_s is None


def test_a_fetched_batch_pays_the_requester_side_group_s_for_its_further_requests():
    """`combine_batch`: three requests fetched together pay, per layer and step, one attention over moved KV and one
    merge at `fixed_s` and two of each at `group_s`; a request alone pays none of it, and profiles without the terms
    price as before. The profile keeps the terms through JSON."""
    from qroute.cost.profile import from_dict
    from qroute.planner import HolderDemand, Request, combine_batch, forced_plan

    def phases(la_group, merge_group, n):
        compute = replace(TRUE, local_attention=replace(TRUE.local_attention, group_s=la_group),
                          merge=replace(TRUE.merge, group_s=merge_group))  # fmt: skip
        profile = replace(load_profile("published-h100"), compute=compute)
        model = CostModel(GEOMETRY, profile)
        request = Request(32, 2, (HolderDemand(1, 256, (profile.default_paths[0],), 256),), 4, False, 0)
        return combine_batch(model, [(request, forced_plan(model, request, "fetch").holders)] * n), profile

    (base, _), (grouped, profile) = phases(None, None, 3), phases(6e-5, 5e-5, 3)
    first = 2 * TRUE.local_attention.first_step_excess, 2 * TRUE.merge.first_step_excess  # the first step's extras, 2 layers
    per_step = 4 * 2  # steps x layers
    assert float(base.compute - grouped.compute) == pytest.approx(2 * (1e-4 - 6e-5) * (per_step + first[0]))
    assert float(base.merge - grouped.merge) == pytest.approx(2 * (8e-5 - 5e-5) * (per_step + first[1]))
    saving = CostModel(GEOMETRY, profile).further_saving_s(3, 3)  # the simulator's batch: the same, per layer and step
    assert saving == pytest.approx(2 * (1e-4 - 6e-5) + 2 * (8e-5 - 5e-5))
    assert float(phases(6e-5, 5e-5, 1)[0].total) == pytest.approx(float(phases(None, None, 1)[0].total))
    back = from_dict(profile.to_dict(), "test")
    assert back.compute.local_attention.group_s == 6e-5 and back.compute.merge.group_s == 5e-5
    assert "group_s" not in load_profile("published-h100").to_dict()["compute"]["merge"]
