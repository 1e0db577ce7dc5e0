"""With published-h100 and DeepSeek-V2-Lite, the planner reproduces the paper's shape."""

import math

import pytest

from qroute.cost import CostModel, load_profile
from qroute.cost.predicate import breakevens
from qroute.geometry import preset
from qroute.planner import plan, uniform_phases, uniform_request


@pytest.fixture(scope="module")
def model():
    return CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))


def totals(model, request):
    return {p: float(uniform_phases(model, request, p).total) for p in ("route", "fetch", "local")}


def test_one_layer_of_256_rows_is_a_round_trip_in_the_published_band(model):
    t = totals(model, uniform_request(256, 2048, 1, layers=1))
    assert 31e-6 <= t["route"] <= 48e-6
    assert plan(model, uniform_request(256, 2048, 1, layers=1)).strategy == "route"


def test_1024_rows_land_near_a_tenth_of_a_millisecond(model):
    t = totals(model, uniform_request(1024, 2048, 1, layers=1))
    assert 0.08e-3 <= t["route"] <= 0.125e-3


@pytest.mark.parametrize("rows", [16, 64, 256])
def test_whole_decode_step_against_a_reused_2k_chunk_routes(model, rows):
    request = uniform_request(rows, 2048, 1, layers=27, offset=4096)
    t = totals(model, request)
    assert plan(model, request).strategy == "route"
    assert t["route"] < t["fetch"]  # move + splice
    sparse = totals(model, uniform_request(rows, 2048, 1, layers=27, sparse=True))
    assert 10 * t["route"] <= sparse["fetch"]  # scattered gather
    assert 10 * t["route"] <= t["local"]  # re-prefill


def bundle_rows(model, tokens, times):
    """Rows whose per-layer route bundle (out + back) is `times` the chunk's per-layer KV bytes."""
    c = model.coef
    return math.ceil(times * tokens * c.kv_token_layer_bytes / (c.q_row_bytes + c.o_row_bytes))


@pytest.mark.parametrize("offset", [0, 4096])
def test_fetch_or_local_once_the_row_bundle_outgrows_the_contiguous_chunk(model, offset):
    assert plan(model, uniform_request(16, 2048, 1, layers=27, offset=offset)).strategy == "route"
    rows = bundle_rows(model, 2048, 4)
    assert plan(model, uniform_request(rows, 2048, 1, layers=27, offset=offset)).strategy in ("fetch", "local")


def test_sparse_selection_needs_a_larger_bundle_because_gather_is_dear(model):
    # the published scattered gather (~1.3 ms per layer) keeps route ahead longer; local takes over eventually
    assert plan(model, uniform_request(bundle_rows(model, 2048, 4), 2048, 1, layers=27, sparse=True)).strategy == "route"
    assert plan(model, uniform_request(bundle_rows(model, 2048, 16), 2048, 1, layers=27, sparse=True)).strategy == "local"


def test_contiguous_fetch_once_the_chunk_is_reused_long_enough(model):
    request = uniform_request(16, 2048, 1, layers=27, offset=4096)
    steps = next(b for b in breakevens(model, request) if b.quantity == "reuse steps: route vs fetch")
    assert steps.value is not None and steps.cheaper_below == "route" and steps.cheaper_above == "fetch"
    before, after = math.floor(steps.value), math.ceil(steps.value)
    assert plan(model, uniform_request(16, 2048, 1, layers=27, offset=4096, steps=before)).strategy == "route"
    assert plan(model, uniform_request(16, 2048, 1, layers=27, offset=4096, steps=after)).strategy == "fetch"
