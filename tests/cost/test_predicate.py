"""Break-even quantities: the closed forms sit exactly where the cost model's choice flips."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.cost import CostModel, load_profile
from qroute.cost.predicate import breakevens, path_crossovers, probe_breakeven
from qroute.geometry import preset
from qroute.planner import uniform_phases, uniform_request


@pytest.fixture(scope="module")
def model():
    return CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))


def total(model, request, prim):
    return float(uniform_phases(model, request, prim).total)


def field_for(quantity):
    return {"rows": "rows", "reuse steps": "steps"}[quantity.split(":")[0]]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 3000), tokens=st.integers(16, 8192), holders=st.integers(1, 4),
       steps=st.integers(1, 30), sparse=st.booleans(), offset=st.sampled_from([0, 512]))
def test_rows_and_steps_breakevens_are_where_the_totals_cross(model, rows, tokens, holders, steps, sparse, offset):
    request = uniform_request(rows, tokens, holders, 27, steps, sparse, offset)
    for b in breakevens(model, request):
        if b.value is None or not b.quantity.startswith(("rows", "reuse steps")) or b.value < 2:
            continue
        a, c = b.quantity.split(": ")[1].split(" vs ")
        name = field_for(b.quantity)
        below = dataclasses.replace(request, **{name: math.floor(b.value)})
        above = dataclasses.replace(request, **{name: math.ceil(b.value) + (b.value == math.ceil(b.value))})
        assert (total(model, below, a) <= total(model, below, c)) == (b.cheaper_below == a)
        assert (total(model, above, a) >= total(model, above, c)) == (b.cheaper_below == a)


def test_local_beats_fetch_only_for_short_chunks_reused_at_an_offset(model):
    request = uniform_request(16, 2048, 1, 27, offset=100)
    b = next(x for x in breakevens(model, request) if x.quantity == "chunk tokens: local vs fetch")
    assert b.cheaper_below == "local" and b.cheaper_above == "fetch"
    with_tokens = lambda t: uniform_request(16, t, 1, 27, offset=100)  # noqa: E731
    lo, hi = with_tokens(math.floor(b.value)), with_tokens(math.ceil(b.value))
    assert total(model, lo, "local") < total(model, lo, "fetch")
    assert total(model, hi, "local") > total(model, hi, "fetch")


def test_probe_breakeven_is_where_route_stops_winning(model):
    request = uniform_request(16, 2048, 1, 27, offset=100, paths=("ibgda",))
    b = probe_breakeven(model, request, "ibgda")
    assert b.cheaper_below == "route" and b.value > 16e-6

    def totals_at(alpha):
        paths = dict(model.profile.paths, ibgda=dataclasses.replace(model.profile.path("ibgda"), alpha_s=alpha))
        m = dataclasses.replace(model, profile=dataclasses.replace(model.profile, paths=paths))
        return {p: total(m, request, p) for p in ("route", "fetch", "local")}

    before, after = totals_at(b.value * 0.99), totals_at(b.value * 1.01)
    assert min(before, key=before.get) == "route"
    assert min(after, key=after.get) != "route"


def test_path_crossovers_listed_for_each_pair(model):
    request = uniform_request(16, 2048, 1, 27, paths=("ibgda", "nvlink4"))
    (pair,) = path_crossovers(model, request)
    (nbytes,) = pair["flips"]
    pa, pb = model.profile.path(pair["a"]), model.profile.path(pair["b"])
    assert pa.time(nbytes) == pytest.approx(pb.time(nbytes))
    assert pair["winners"] == ["nvlink4", "ibgda"]  # lower probe latency below, higher rate above
    assert {x.path for x in breakevens(model, request)} == {"ibgda", "nvlink4"}


def test_rows_breakeven_across_a_small_message_regime(model):
    from qroute.cost.profile import SmallRegime

    path = model.profile.path("ibgda")
    knee = 300 * (model.coef.q_row_bytes + model.coef.o_row_bytes)  # route switches regime at 300 rows
    slow_small = dataclasses.replace(path, small=SmallRegime(knee, 4e-6, 5e9))
    m = dataclasses.replace(model, profile=dataclasses.replace(model.profile, paths={"ibgda": slow_small}))
    request = uniform_request(16, 2048, 1, 27, offset=100)
    b = next(x for x in breakevens(m, request) if x.quantity == "rows: route vs fetch")
    lo, hi = dataclasses.replace(request, rows=math.floor(b.value)), dataclasses.replace(request, rows=math.ceil(b.value))
    assert total(m, lo, "route") <= total(m, lo, "fetch")
    assert total(m, hi, "route") >= total(m, hi, "fetch")
