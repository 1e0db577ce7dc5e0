"""The compute fits recover known coefficients from a synthetic trace with noise and stalls, and price a merge that
follows a route exchange, or an attention over moved KV, apart from the others."""

from dataclasses import replace

import numpy as np
import pytest

from qroute.calibration.insitu_compute import fit_compute_from_trace
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


def synthetic_compute_trace(seed: int) -> list[dict]:
    """Every record kind the fit reads, 5 samples per shape with 1% noise and one 4 ms stall in each shape."""
    model = CostModel(GEOMETRY, replace(load_profile("published-h100"), compute=TRUE))
    rng = np.random.default_rng(seed)
    trace = []

    def add(kind, seconds, field="seconds", **shape):
        for i in range(5):
            t = seconds * (1 + rng.normal(0, 0.01)) + (4e-3 if i == 2 else 0.0)
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
    add("route", 2 * model.attention_s(16, 64), "holder_compute_s", groups=[[16, 64], [16, 64]])  # two groups
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
