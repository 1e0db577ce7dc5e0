"""Cost model: phase formulas, linearity the closed forms rely on, path choice."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.cost import CostModel, PathSpec, Shape, load_profile, path_crossover_bytes
from qroute.cost.model import best_path, path_flips
from qroute.errors import QrouteError
from qroute.geometry import preset


@pytest.fixture(scope="module")
def model():
    return CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))


def test_route_phases_by_hand(model):
    p = model.profile.path("ibgda")
    ph = model.route(Shape(rows=100, tokens=512, layers=1), p)
    assert ph.probe == pytest.approx(16e-6)
    assert ph.transfer == pytest.approx(100 * 1152 / 25e9)
    assert ph.ret == pytest.approx(100 * 1028 / 25e9)
    a = model.profile.compute.attention
    assert ph.compute == pytest.approx(a.fixed_s + 512 * 1152 / a.read_Bps + 100 * 512 * 2 * 1088 / a.flops_per_s)
    m = model.profile.compute.merge
    assert ph.merge == pytest.approx(m.fixed_s + 100 * 2 * 1028 / m.Bps)


@pytest.mark.parametrize("ports", [0.0, 0.5, 1.0])
def test_the_other_holders_bytes_move_by_the_paths_serial_fraction(model, ports):
    p = dataclasses.replace(model.profile.path("ibgda"), bytes_serial=ports)
    ph = model.route(Shape(rows=100, tokens=512, layers=1, holders=3), p)
    assert ph.transfer == pytest.approx((1 + 2 * ports) * 100 * 1152 / 25e9)
    assert ph.ret == pytest.approx((1 + 2 * ports) * 100 * 1028 / 25e9)
    assert ph.probe == pytest.approx(model.route(Shape(rows=100, tokens=512, layers=1, holders=3), model.profile.path("ibgda")).probe)


def test_fetch_pays_once_and_route_every_layer_and_step(model):
    p = model.profile.path("ibgda")
    one = Shape(16, 2048, 27, steps=1)
    ten = dataclasses.replace(one, steps=10)
    assert model.route(ten, p).total == pytest.approx(10 * model.route(one, p).total)
    fetch1, fetch10 = model.fetch(one, p), model.fetch(ten, p)
    assert fetch10.transfer == fetch1.transfer and fetch10.probe == fetch1.probe
    assert model.route(Shape(16, 2048, 27), p).probe == pytest.approx(27 * p.alpha_s)


def test_splice_only_when_reused_at_an_offset_and_gather_only_when_sparse(model):
    p = model.profile.path("ibgda")
    base = Shape(16, 2048, 27)
    plain = model.fetch(base, p).compute
    spliced = model.fetch(dataclasses.replace(base, offset=7), p).compute
    gathered = model.fetch(dataclasses.replace(base, sparse=True), p).compute
    assert spliced - plain == pytest.approx(model.splice_s(2048, 27))
    assert gathered - plain == pytest.approx(model.gather_s(2048, 1, 27))
    assert model.splice_s(2048, 27) == pytest.approx(3e-3, rel=1e-3)


def test_a_route_pays_its_holders_first_step_once_per_layer(model):
    p = model.profile.path("ibgda")
    attention = dataclasses.replace(model.profile.compute.attention, first_step_excess=0.1)
    cold = dataclasses.replace(model, profile=dataclasses.replace(
        model.profile, compute=dataclasses.replace(model.profile.compute, attention=attention)))  # fmt: skip
    for steps in (1, 6):
        shape = Shape(16, 512, 27, steps=steps, holders=2)
        extra = cold.route(shape, p).compute - model.route(shape, p).compute
        assert extra == pytest.approx(27 * 0.1 * model.attention_s(16, 512))
        assert cold.fetch(shape, p).total == model.fetch(shape, p).total  # no holder attends in a fetch


@pytest.mark.parametrize("prim", ["fetch", "local"])
def test_a_request_over_moved_kv_pays_the_requesters_first_step_once_per_layer(model, prim):
    """`local_attention.first_step_excess` 0.05 and `merge.first_step_excess` 0.2: the first decode step's attention
    over moved KV and merge cost that much more, once per layer whatever the steps; a route pays neither."""
    p = model.profile.path("ibgda")
    c = model.profile.compute
    cold = dataclasses.replace(model, profile=dataclasses.replace(model.profile, compute=dataclasses.replace(
        c, local_attention=dataclasses.replace(c.local_attention, first_step_excess=0.05),
        merge=dataclasses.replace(c.merge, first_step_excess=0.2))))  # fmt: skip
    for steps in (1, 6):
        shape = Shape(16, 512, 27, steps=steps, holders=2)
        per_layer = model.moved_per_layer(shape)
        got, plain = cold.primitive(prim, shape, p), model.primitive(prim, shape, p)
        assert got.compute - plain.compute == pytest.approx(27 * 0.05 * per_layer.compute)
        assert got.merge - plain.merge == pytest.approx(27 * 0.2 * per_layer.merge)
        assert cold.route(shape, p).total == model.route(shape, p).total


@pytest.mark.parametrize("holders", [1, 2, 4])
def test_the_slowest_of_several_holders_pays_the_parallel_excess_in_compute(model, holders):
    """`parallel_excess` 0.1: each holder beyond the first makes the exchange's compute (the slowest holder's) 10%
    longer, every step and the first step's excess on top; one holder, the network and fetch pay nothing."""
    p = model.profile.path("ibgda")
    attention = dataclasses.replace(model.profile.compute.attention, parallel_excess=0.1, first_step_excess=0.2)
    slow = dataclasses.replace(model, profile=dataclasses.replace(
        model.profile, compute=dataclasses.replace(model.profile.compute, attention=attention)))  # fmt: skip
    base = dataclasses.replace(slow, profile=dataclasses.replace(model.profile, compute=dataclasses.replace(
        model.profile.compute, attention=dataclasses.replace(attention, parallel_excess=0.0))))  # fmt: skip
    shape = Shape(16, 512, 27, steps=3, holders=holders)
    a = model.attention_s(16, 512)
    extra = slow.route(shape, p).compute - base.route(shape, p).compute
    assert extra == pytest.approx((holders - 1) * 0.1 * a * 27 * (3 + 0.2))
    assert slow.route(shape, p).probe == base.route(shape, p).probe  # the others' serial compute: one holder's alone
    assert slow.fetch(shape, p).total == base.fetch(shape, p).total


def test_a_fetch_moves_at_the_paths_fetch_rate_where_it_has_one(model):
    p = model.profile.path("ibgda")
    own = dataclasses.replace(p, fetch_beta_Bps=p.beta_Bps / 2)
    shape = Shape(16, 2048, 27, steps=3, holders=2)
    assert model.fetch(shape, own).transfer == pytest.approx(2 * model.fetch(shape, p).transfer)
    assert model.route(shape, own).total == model.route(shape, p).total
    assert own.fetch_time(1e6) - p.fetch_time(1e6) == pytest.approx(1e6 / p.beta_Bps)


@pytest.mark.parametrize("holders", [1, 3])
def test_each_fetched_reply_pays_its_handling_once_whatever_the_steps(model, holders):
    p = model.profile.path("ibgda")
    gather = dataclasses.replace(model.profile.compute.gather, reply_s=8e-5)
    priced = dataclasses.replace(model, profile=dataclasses.replace(
        model.profile, compute=dataclasses.replace(model.profile.compute, gather=gather)))  # fmt: skip
    for steps in (1, 6):
        shape = Shape(16, 512, 27, steps=steps, holders=holders, offset=9)
        extra = priced.fetch(shape, p).compute - model.fetch(shape, p).compute
        assert extra == pytest.approx(holders * 8e-5)
        assert priced.route(shape, p).total == model.route(shape, p).total  # a route fetches nothing
        assert priced.local(shape).total == model.local(shape).total


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 5000), tokens=st.integers(1, 8192), layers=st.integers(1, 61),
       steps=st.integers(1, 50), holders=st.integers(1, 8), sparse=st.booleans(), offset=st.integers(-5, 5))
def test_costs_are_affine_in_rows_and_steps(model, rows, tokens, layers, steps, holders, sparse, offset):
    p = model.profile.path("ibgda")
    s = Shape(rows, tokens, layers, steps, holders, sparse, offset)
    for prim in ("route", "fetch", "local"):
        f = lambda **kw: float(model.primitive(prim, dataclasses.replace(s, **kw), p).total)  # noqa: E731
        assert f(rows=rows + 2) - f(rows=rows + 1) == pytest.approx(f(rows=rows + 1) - f(rows=rows), rel=1e-6, abs=1e-15)
        assert f(steps=steps + 2) - f(steps=steps + 1) == pytest.approx(f(steps=steps + 1) - f(steps=steps), rel=1e-6, abs=1e-15)


def test_vectorised_shapes_match_scalar_ones(model):
    p = model.profile.path("ibgda")
    rows, tokens = np.array([1, 17, 900]), np.array([64, 2048, 5])
    batched = model.route(Shape(rows, tokens, 27), p).total
    for i in range(3):
        assert batched[i] == pytest.approx(model.route(Shape(int(rows[i]), int(tokens[i]), 27), p).total)


def test_path_choice_by_message_size():
    fast_probe, wide = PathSpec(2e-6, 10e9), PathSpec(20e-6, 100e9)
    cross = path_crossover_bytes(fast_probe, wide)
    assert cross == pytest.approx(18e-6 / (1 / 10e9 - 1 / 100e9))
    assert fast_probe.time(cross) == pytest.approx(wide.time(cross))
    paths = {"fast": fast_probe, "wide": wide}
    assert best_path(paths, cross * 0.5)[0] == "fast"
    assert best_path(paths, cross * 2)[0] == "wide"
    assert path_crossover_bytes(PathSpec(1e-6, 50e9), PathSpec(2e-6, 10e9)) is None  # one dominates


def test_bad_shapes_rejected():
    with pytest.raises(QrouteError, match="rows=0"):
        Shape(0, 10, 1)
    with pytest.raises(QrouteError, match="chunk tokens=-3"):
        Shape(1, -3, 1)
    with pytest.raises(QrouteError, match="expected every value >= 1"):
        Shape(np.array([1, 0]), np.array([2, 2]), 1)


def test_small_message_regime():
    from qroute.cost.profile import SmallRegime

    p = PathSpec(100e-6, 10e9, small=SmallRegime(64e3, 20e-6, 2e9))
    assert p.time(1e3) == pytest.approx(20e-6 + 1e3 / 2e9)
    assert p.time(1e6) == pytest.approx(100e-6 + 1e6 / 10e9)
    sizes = np.array([1e3, 1e6])
    assert np.allclose(p.time(sizes), [p.time(1e3), p.time(1e6)])
    plain = PathSpec(50e-6, 5e9)
    flips = path_flips(p, plain)
    assert flips == [pytest.approx(64e3), pytest.approx(500e3)]  # the regime boundary, then a closed-form crossing
    assert path_crossover_bytes(p, plain) == flips[0]
    winner = [p.time(x) < plain.time(x) for x in (1e3, 1e5, 1e7)]
    assert winner == [True, False, True]


def test_small_regime_survives_the_profile_file(tmp_path):
    from qroute.cost import profile as prof
    from qroute.cost.profile import SmallRegime

    p = load_profile("published-h100")
    paths = dict(p.paths, ibgda=dataclasses.replace(p.path("ibgda"), small=SmallRegime(32e3, 9e-6, 12e9)))
    q = dataclasses.replace(p, paths=paths)
    q.save(tmp_path / "q.json")
    assert prof.load(tmp_path / "q.json") == q


def test_route_pays_the_stalls_of_its_median_request_once(model):
    p = model.profile.path("ibgda")
    stalled = dataclasses.replace(p, stall_rate_multi=1e4, stall_s_multi=1e-3)  # exchanges of ~25 us
    shape = Shape(rows=64, tokens=512, layers=4, steps=8, holders=2)
    base, with_stalls = model.route(shape, p), model.route(shape, stalled)
    per_layer = model.route(dataclasses.replace(shape, layers=1, steps=1), p)
    exchange = per_layer.total - per_layer.merge - p.cold_s
    assert with_stalls.probe - base.probe == pytest.approx(stalled.stalls_s(32, 2, exchange))
    assert with_stalls.probe - base.probe > 0 and with_stalls.transfer == base.transfer


KNOTS = ((7e4, 7e-4), (1.4e5, 8e-4), (4.2e5, 1.0e-3), (5e6, 4.5e-3))


def test_knots_price_route_exchanges_between_them_and_fetches_on_the_line():
    p = PathSpec(6e-4, 1.6e9, knots=KNOTS)
    for (b0, t0), (b1, t1) in zip(KNOTS, KNOTS[1:]):  # each knot exactly, the chord between two
        assert p.time(b0) == pytest.approx(t0) and p.time(b1) == pytest.approx(t1)
        assert p.time((b0 + b1) / 2) == pytest.approx((t0 + t1) / 2)
    assert p.time(1e7) == pytest.approx(4.5e-3 + 5e6 / 1.6e9)  # above: the last knot, then the line's rate
    assert p.time(1e3) == pytest.approx(6e-4 + 1e3 / 1.6e9)  # below: the line
    assert p.fetch_time(2e5) == pytest.approx(6e-4 + 2e5 / 1.6e9)  # fetches: the line, wherever the knots are
    sizes = np.array([1e3, 7e4, 1e5, 2e5, 5e6, 1e7])
    assert np.allclose(p.time(sizes), [p.time(float(b)) for b in sizes], rtol=1e-12)
    assert np.allclose(p.alpha(sizes) + sizes / p.beta(sizes), p.time(sizes), rtol=1e-12)


def test_path_flips_with_knots_are_where_the_cheaper_path_changes():
    knotted = PathSpec(6e-4, 1.6e9, knots=KNOTS)
    for plain in (PathSpec(8.5e-4, 1e10), PathSpec(5e-4, 1.2e9), PathSpec(7.5e-4, 4e9)):
        sizes = np.geomspace(1e3, 1e8, 20001)
        cheaper = knotted.time(sizes) < plain.time(sizes)
        expected = sizes[1:][cheaper[1:] != cheaper[:-1]]
        flips = path_flips(knotted, plain)
        assert len(flips) == len(expected)
        assert all(f == pytest.approx(e, rel=1e-3) for f, e in zip(flips, expected))


def test_knots_survive_the_profile_file_and_out_of_order_ones_are_refused(tmp_path):
    from qroute.cost import profile as prof
    from qroute.errors import QrouteError

    p = load_profile("published-h100")
    q = dataclasses.replace(p, paths=dict(p.paths, ibgda=dataclasses.replace(p.path("ibgda"), knots=KNOTS)))
    q.save(tmp_path / "q.json")
    assert prof.load(tmp_path / "q.json") == q
    with pytest.raises(QrouteError, match=r"path 'ibgda': knots=.*expected ascending bytes and non-decreasing seconds"):
        dataclasses.replace(p, paths=dict(p.paths, ibgda=dataclasses.replace(p.path("ibgda"), knots=KNOTS[::-1])))


def test_a_scattered_fetch_pays_its_extra_once_in_the_model_and_the_planner(model):
    """`fetch_scatter_s` (profile/14) is added once to a fetch of a scattered selection (`sparse`), by the model and by
    the planner alike, and nothing else moves; a contiguous fetch and route do not pay it; it survives the file."""
    from qroute.planner import uniform_phases, uniform_request

    base = model.profile.path("ibgda")
    scat = dataclasses.replace(base, fetch_scatter_s=3e-4)
    for holders in (1, 2):
        shape = Shape(16, 512, 27, steps=2, holders=holders, sparse=True)
        assert model.fetch(shape, scat).total - model.fetch(shape, base).total == pytest.approx(3e-4)
        contiguous = dataclasses.replace(shape, sparse=False)
        assert model.fetch(contiguous, scat).total == pytest.approx(model.fetch(contiguous, base).total)
        assert model.route(shape, scat).total == pytest.approx(model.route(shape, base).total)
    profile = dataclasses.replace(model.profile, paths={**model.profile.paths, "ibgda": scat}, default_paths=("ibgda",))
    other = dataclasses.replace(model, profile=profile)
    plain = dataclasses.replace(model, profile=dataclasses.replace(model.profile, default_paths=("ibgda",)))
    for sparse, paid in ((True, 3e-4), (False, 0.0)):
        request = uniform_request(16, 512, 2, 27, steps=2, sparse=sparse)
        gap = uniform_phases(other, request, "fetch").total - uniform_phases(plain, request, "fetch").total
        assert gap == pytest.approx(paid, abs=1e-12)
    assert PathSpec.from_dict(scat.to_dict()) == scat and "fetch_scatter_s" not in base.to_dict()
