"""In-situ fits recover known path constants (alpha, beta, wake-up, per-holder extra) from synthetic traces."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qroute.calibration.insitu import cold_excess, fit_path_from_trace, stall_terms
from qroute.calibration.insitu_parallel import per_holder_excess
from qroute.calibration.insitu_records import idle_of
from qroute.calibration.insitu_compute import first_step_excess, parallel_excess, reply_excess
from qroute.cost import CostModel, load_profile
from qroute.cost.model import Shape
from qroute.cost.profile import AttentionCoeffs, PathSpec
from qroute.geometry import preset


def _route(rng, step, layer, nbytes, seconds, first, parallel=1, hc=None):
    hc = rng.uniform(1e-4, 5e-4) if hc is None else hc
    return {"kind": "route", "step": step, "layer": layer, "payload_out": nbytes // 2, "payload_back": nbytes - nbytes // 2,
            "rtt_s": seconds + hc, "holder_compute_s": hc, "parallel": parallel, "first_step": first}  # fmt: skip


def synthetic_trace(alpha, beta, cold, per_holder, seed, layers=2, steps=3, stall=4e-3, fetch_offset=None, serial=0.0,
                    ports=1.0, fetch_beta=None):  # fmt: skip
    """Requests as calibration serves them: per size one request of `steps` steps x `layers` layers (the first step
    pays `cold` on its first layer), fetches (`fetch_offset` beyond a route exchange of their size, default
    `cold`; at `fetch_beta` if given, else `beta`), and pairs of holders asked at once over two chunks (the second
    holder's bytes `ports` serialised)."""
    fetch_offset = cold if fetch_offset is None else fetch_offset
    rng = np.random.default_rng(seed)
    noise = lambda: 1 + rng.normal(0, 0.01)  # noqa: E731
    trace, step = [], 0
    sizes = np.geomspace(4e3, 2e6, 7).astype(int)
    for rep in range(3):
        for b in sizes:
            for s in range(steps):
                for layer in range(layers):
                    t = (alpha + b / beta) * noise() + (cold if s == 0 and layer == 0 else 0.0)
                    t += stall if rng.random() < 0.08 else 0.0  # the scheduler's 4 ms mode
                    trace.append(_route(rng, step, layer, int(b), t, s == 0))
                step += 1
            for chunk in (1, 4):  # two holders at once, warm; their compute grows with the rows and the chunk
                for layer in range(layers):
                    hcs = rng.uniform(0.8, 1.2, 2) * chunk * (5e-5 + b / 2e9)
                    wall = (alpha + (1 + ports) * b / beta + per_holder + serial * hcs.min()) * noise() + hcs.max()
                    for h in range(2):
                        rec = _route(rng, step, layer, int(b), 0.0, False, parallel=2, hc=hcs[h])
                        rec["rtt_s"], rec["groups"] = (wall if h == 1 else wall * 0.8), [[1, 64 * chunk]]
                        trace.append(rec)
                step += 1
        for b in sizes[::2] * 8:
            gather = rng.uniform(0, 1e-4)
            trace.append({"kind": "fetch", "bytes": int(b), "parallel": 1, "holder_compute_s": gather,
                          "rtt_s": (alpha + b / (fetch_beta or beta)) * noise() + fetch_offset + gather, "tokens": 1,
                          "layers": 1})  # fmt: skip
    return trace


@settings(max_examples=20, deadline=None)
@given(alpha=st.floats(2e-5, 1e-3), beta=st.floats(3e8, 2e10), cold=st.floats(0, 2e-3),
       per_holder=st.floats(0, 5e-4), offset=st.floats(-1e-5, 1e-3), serial=st.floats(0, 1), ports=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
@example(alpha=8.84e-4, beta=3e8, cold=0.0, per_holder=2e-5, offset=0.0, serial=0.0, ports=0.0, seed=2_041_807_438)  # a
# cap at the smallest shapes' others' compute, kept on noise alone, priced 0.34 of it as serial: CI, 2026-11-26
def test_path_constants_and_wake_up_recovered_from_a_trace(alpha, beta, cold, per_holder, offset, serial, ports, seed):
    trace = synthetic_trace(alpha, beta, cold, per_holder, seed, fetch_offset=offset, serial=serial, ports=ports)
    spec, fit = fit_path_from_trace(trace, "synthetic")
    assert spec.alpha(4e3) + 4e3 / spec.beta(4e3) == pytest.approx(alpha + 4e3 / beta, rel=0.05)
    assert spec.time(2e6) == pytest.approx(alpha + 2e6 / beta, rel=0.05)
    scale = alpha + 4e3 / beta  # the wake-up, per-holder and fetch terms are read against one small exchange
    assert spec.cold_s == pytest.approx(cold, abs=0.05 * scale + 0.02 * cold)
    assert spec.per_holder_s == pytest.approx(per_holder, abs=0.1 * scale + 0.05 * per_holder)
    assert spec.fetch_offset_s == pytest.approx(offset, abs=0.1 * scale + 0.02 * abs(offset))  # 5% failed at 5.1%
    if spec.serial_cap_s is None:
        assert spec.holder_serial == pytest.approx(serial, abs=0.1)
    else:  # a cap (kept rarely on noise alone) trades holder_serial for per_holder_s: their sum over the shapes holds
        for others in np.geomspace(5e-5, 4.2e-3, 9):  # the others' computes the trace's shapes span
            priced = spec.per_holder_s + spec.holder_serial * min(others, spec.serial_cap_s)
            assert priced == pytest.approx(per_holder + serial * others, abs=0.1 * (scale + others) + 0.05 * per_holder)
    # the second holder's bytes at the largest size, priced within 10% of that exchange and 2% of what else its two
    # holders add (their noise, 1% of the whole, hides the bytes' share where the others' compute is large)
    big, others = 2e6 / beta, per_holder + serial * 4 * (5e-5 + 2e6 / 2e9)
    assert abs(spec.bytes_serial - ports) * big <= 0.1 * (alpha + big) + 0.02 * others
    assert spec.fetch_time(1e6) == pytest.approx(alpha + offset + 1e6 / beta, rel=0.05)
    assert fit.median_ape < 0.03


def test_no_first_steps_and_no_parallel_exchanges_price_nothing():
    rng = np.random.default_rng(0)
    warm = [_route(rng, i, 0, 8000, 1e-4, False) for i in range(5)]
    assert cold_excess(warm) == (0.0, ())
    assert per_holder_excess(warm, PathSpec(1e-4, 1e9)) is None


def test_holders_that_compute_one_after_another_are_priced_so():
    base = load_profile("published-h100")
    nvlink = base.path(base.default_paths[0])
    serial = replace(base, paths={**base.paths, base.default_paths[0]: replace(nvlink, holder_serial=1.0)})
    shape = Shape(rows=64, tokens=4096, layers=4, holders=3)
    geometry = preset("deepseek-v2-lite")
    side_by_side = CostModel(geometry, base).route(shape, nvlink)
    one_by_one = CostModel(geometry, serial).route(shape, serial.path(base.default_paths[0]))
    # the two others' computes are waited for, in the exchange (network, as the runtime measures it)
    assert one_by_one.compute == pytest.approx(side_by_side.compute)
    assert one_by_one.probe - side_by_side.probe == pytest.approx(2 * side_by_side.compute)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", ["step", "exponential"])
def test_a_wake_up_that_grows_with_the_holders_idle_time_is_recovered(seed, shape):
    """Requests of three steps x two layers over three sizes; the first exchange of each pays a wake-up that grows
    with how long the holder sat idle (0.5-4 ms before most requests, 10-300 ms before the rest): a step from 60 to
    560 us at 20 ms (as the dev VM's gloo path), or 100 us + 500 us (1 - exp(-idle / 50 ms)); with stalls. The
    wake-up priced after each measured idle time comes back, and between them no further than the curve moves."""
    rng = np.random.default_rng(seed)
    truth = {"step": lambda t: 6e-5 if t < 0.02 else 5.6e-4, "exponential": lambda t: 1e-4 + 5e-4 * -np.expm1(-t / 0.05)}[shape]
    trace, step = [], 0
    for request in range(60):
        idle = (0.01, 0.03, 0.1, 0.3)[request % 4] if request % 3 == 0 else rng.uniform(5e-4, 4e-3)
        nbytes = (8000, 64000, 512000)[request % 3]
        for s in range(3):
            step += 1
            for layer in range(2):
                t = (2e-4 + nbytes / 2e9) * (1 + rng.normal(0, 0.01)) + (truth(idle) if s == 0 and layer == 0 else 0.0)
                t += 4e-3 if rng.random() < 0.05 else 0.0
                trace.append({**_route(rng, step, layer, nbytes, t, s == 0), "idle_s": idle if layer == 0 else 1e-4})
    flat, curve = cold_excess(trace)
    path = PathSpec(2e-4, 2e9, cold_s=flat, cold_idle=curve)
    for idle in (0.002, 0.01, 0.03, 0.1, 0.3):
        assert path.cold_at(idle) == pytest.approx(truth(idle), abs=6e-5)
    assert path.cold_at(0.05) == pytest.approx(truth(0.05), abs=0.3 * (truth(0.1) - truth(0.03)) + 6e-5)
    assert [v for _, v in curve] == sorted(v for _, v in curve)  # a holder idle longer wakes no faster
    assert path.cold_at(None) == flat == pytest.approx(truth(0.002), abs=6e-5)  # unknown: the median first step
    no_idle = [{k: v for k, v in r.items() if k != "idle_s"} for r in trace]
    assert cold_excess(no_idle) == (pytest.approx(flat), ())  # an older trace: one wake-up, its robust median


def test_a_first_step_faster_than_later_ones_prices_no_negative_wake_up():
    rng = np.random.default_rng(1)
    trace = [_route(rng, s, 0, 8000, 1e-4 if s % 3 == 0 else 2e-4, s % 3 == 0) for s in range(12)]
    assert cold_excess(trace)[0] == 0.0


def _insitu_line(alpha, beta, seed):
    """Warm single-holder route exchanges at five sizes spanning 32x (several layers each) and fetches among them."""
    rng = np.random.default_rng(seed)
    trace = []
    for i, b in enumerate(np.geomspace(7e4, 2.2e6, 5).astype(int)):
        for step in range(4):
            trace.append(_route(rng, 10 * i + step, 0, int(b), (alpha + b / beta) * (1 + rng.normal(0, 0.005)), False))
    for b in np.geomspace(1.5e5, 2e6, 4).astype(int):
        trace.append({"kind": "fetch", "bytes": int(b), "parallel": 1, "holder_compute_s": 0.0, "rtt_s": alpha + b / beta})
    return trace


def test_a_faster_ping_pong_sweep_does_not_pull_the_runtimes_own_line():
    # measured on the H100 host: a ping-pong in a loop took 0.72 ms where a route exchange of 70 KB took 0.97 ms
    alpha, beta = 9e-4, 2e9
    sweep = {int(b): 6e-4 + b / 5e9 for b in (16, 256, 4096, 65536)}  # below the runtime's sizes: faster
    sweep |= {4 << 20: 1e-3 + (4 << 20) / 4e9, 16 << 20: 1e-3 + (16 << 20) / 4e9}  # above: another line
    spec, fit = fit_path_from_trace(_insitu_line(alpha, beta, 0), "synthetic", sweep)
    for b in (7e4, 3e5, 1.1e6, 2.2e6):
        assert spec.time(b) == pytest.approx(alpha + b / beta, rel=0.01)
    for b, t in sweep.items():
        if b < 7e4:  # below, the sweep's own numbers (the small-message regime)
            assert spec.time(b) == pytest.approx(t, rel=0.05)
    assert spec.small is not None and 65536 < spec.small.below_bytes < 7e4
    assert "sweep" in fit.origins and max(b for b, _ in fit.points) < 4 << 20  # the sweep above is not fitted


def test_in_situ_sizes_too_close_together_pool_with_the_sweep():
    rng = np.random.default_rng(3)
    alpha, beta = 5e-4, 1e9
    trace = [_route(rng, i, 0, int(b), alpha + b / beta, False) for i, b in enumerate((6e4, 8e4, 1e5) * 3)]
    sweep = {int(b): alpha + b / beta for b in (16, 1024, 4 << 20, 16 << 20)}
    spec, fit = fit_path_from_trace(trace, "synthetic", sweep)
    assert len(fit.points) == 7 and spec.time(16 << 20) == pytest.approx(alpha + (16 << 20) / beta, rel=0.01)


@settings(max_examples=10, deadline=None)
@given(extra=st.floats(0, 2e-3), seed=st.integers(0, 2**32 - 1))
def test_a_parallel_fetchs_extra_per_holder_is_recovered(extra, seed):
    alpha, beta = 7e-4, 2e9
    trace = _insitu_line(alpha, beta, seed)
    rng = np.random.default_rng(seed)
    for request in range(5):
        sizes = rng.integers(1e5, 1e6, 2)
        gathers = rng.uniform(0, 1e-4, 2)
        wall = alpha + sizes.sum() / beta + extra + gathers.sum()
        wall += 4e-3 if request == 0 else 0.0  # one stall: the median ignores it
        for h in range(2):
            trace.append({"kind": "fetch", "request": request, "bytes": int(sizes[h]), "parallel": 2,
                          "holder_compute_s": gathers[h], "rtt_s": wall * (0.7 if h == 0 else 1.0), "wall_s": wall})  # fmt: skip
    spec, _ = fit_path_from_trace(trace, "synthetic")
    assert spec.fetch_per_holder_s == pytest.approx(extra, abs=0.03 * alpha)
    assert spec.fetch_extra_s == spec.fetch_per_holder_s


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ports", [0.0, 0.3, 1.0])
def test_a_parallel_fetchs_overlapping_bytes_are_recovered(seed, ports):
    """Fetches from two holders at once over four sizes, three times each, the second holder's bytes `ports`
    serialised after the first's plus 150 us per extra holder, one stall: both come back, and the model, the planner
    and the path agree on a 2-holder fetch's transfer."""
    alpha, beta, extra = 7e-4, 2e9, 1.5e-4
    trace = _insitu_line(alpha, beta, seed)
    rng = np.random.default_rng(seed)
    request = 0
    for size in (1e5, 3e5, 1e6, 3e6):
        for _ in range(3):
            request += 1
            gathers = rng.uniform(0, 1e-4, 2)
            wall = (alpha + (1 + ports) * size / beta + extra) * (1 + rng.normal(0, 0.01)) + gathers.sum()
            wall += 4e-3 if request == 5 else 0.0
            for h in range(2):
                trace.append({"kind": "fetch", "request": request, "bytes": int(size), "parallel": 2,
                              "holder_compute_s": gathers[h], "rtt_s": wall, "wall_s": wall})  # fmt: skip
    spec, _ = fit_path_from_trace(trace, "synthetic")
    assert spec.fetch_bytes_serial == pytest.approx(ports, abs=0.06)
    assert spec.fetch_per_holder_s == pytest.approx(extra, abs=6e-5)
    model = CostModel(preset("deepseek-v2-lite"), replace(load_profile("published-h100"), paths={"p": spec}, default_paths=("p",)))
    nbytes = model.fetch_bytes(2048, 27)
    one = model.fetch(Shape(rows=16, tokens=2048, layers=27, holders=1), spec).transfer
    two = model.fetch(Shape(rows=16, tokens=2048, layers=27, holders=2), spec).transfer
    assert one == pytest.approx(nbytes / spec.fetch_beta(nbytes)) and two == pytest.approx(one * (1 + spec.fetch_bytes_serial))


def test_without_parallel_fetches_a_fetch_takes_the_route_exchanges_extra():
    spec, _ = fit_path_from_trace(_insitu_line(7e-4, 2e9, 1), "synthetic")
    assert spec.fetch_per_holder_s is None
    assert replace(spec, per_holder_s=3e-4).fetch_extra_s == 3e-4


def test_a_spanning_request_asks_two_holders_and_none_with_one():
    from qroute.calibration.shapes import spanning_request
    from qroute.runtime.world import WorldSpec, build_world
    from qroute.workload.corpus import CorpusSpec

    spec = WorldSpec(corpus=CorpusSpec(max_tokens=2048, chunk_blocks=8))
    world = build_world(spec, [1, 2], device="cpu")
    r = spanning_request(world, 2, 6, 1, seed=5)
    by_holder = world.directory.by_holder(r.blocks)
    assert sorted(by_holder) == [1, 2] and [len(b) for b in by_holder.values()] == [3, 3]
    assert all(b == blocks[0] + i for blocks in by_holder.values() for i, b in enumerate(blocks))  # contiguous runs
    assert spanning_request(build_world(spec, [1], device="cpu"), 2, 6, 1, seed=5) is None


@pytest.mark.parametrize("serial", [0.0, 0.4, 0.9])
def test_holder_serial_is_read_from_chunks_of_one_message_size(serial):
    """Parallel exchanges of two message sizes whose holders' compute varies with the chunk they attend, not with
    the rows: keyed by bytes alone, the chunks' medians pooled into two near-equal points and hid the slope."""
    rng = np.random.default_rng(7)
    path, per_holder = PathSpec(3e-4, 2e9), 4e-4
    trace, step = [], 0
    for b in (20_000, 80_000):
        for tokens in (64, 256, 512, 1024):
            for _ in range(6):
                hcs = rng.uniform(0.9, 1.1, 2) * tokens * 2e-6  # holders' compute grows with the chunk
                wall = (path.alpha(b) + 2 * b / path.beta(b) + per_holder + serial * hcs.min()) * (1 + rng.normal(0, 0.01))
                for h in range(2):
                    rec = _route(rng, step, 0, b, 0.0, False, parallel=2, hc=hcs[h])
                    rec["rtt_s"], rec["groups"] = wall + hcs.max(), [[16, tokens]]
                    trace.append(rec)
                step += 1
    fixed, fraction, ports, cap = per_holder_excess(trace, path)
    assert fraction == pytest.approx(serial, abs=0.05)
    assert fixed == pytest.approx(per_holder, abs=5e-5)
    assert cap is None  # the others' compute serialises whole here: no cap cuts the residual


@pytest.mark.parametrize("cap", [4e-4, 8e-4])
def test_a_cap_on_the_serial_compute_is_found_where_long_computes_overlap(cap):
    """On an oversubscribed host the second holder waits for the first one's compute only up to some point: the
    excess grows with the others' compute, then stays flat. The fit finds where, and prices both ends."""
    rng = np.random.default_rng(3)
    path, per_holder, serial = PathSpec(3e-4, 2e9), 2e-4, 0.9
    trace, step = [], 0
    for b in (20_000, 80_000, 320_000):
        for tokens in (64, 128, 256, 512, 1024, 2048):
            for _ in range(6):
                hcs = rng.uniform(0.95, 1.05, 2) * tokens * 1e-6
                extra = per_holder + serial * min(hcs.min(), cap) + 0.3 * b / path.beta(b)
                wall = (path.alpha(b) + b / path.beta(b) + extra) * (1 + rng.normal(0, 0.01))
                for h in range(2):
                    rec = _route(rng, step, 0, b, 0.0, False, parallel=2, hc=hcs[h])
                    rec["rtt_s"], rec["groups"] = wall + hcs.max(), [[16, tokens]]
                    trace.append(rec)
                step += 1
    report: dict = {}
    fixed, fraction, ports, got = per_holder_excess(trace, path, report)
    assert got == pytest.approx(cap, rel=0.15) and report["residual"] < 0.5 * report["residual_uncapped"]
    assert fraction == pytest.approx(serial, abs=0.1) and fixed == pytest.approx(per_holder, abs=1e-4)
    assert ports == pytest.approx(0.3, abs=0.1)


def test_a_wide_request_takes_whole_chunks_of_one_holder_and_none_beyond_its_blocks():
    from qroute.calibration.shapes import wide_request
    from qroute.runtime.world import WorldSpec, build_world
    from qroute.workload.corpus import CorpusSpec

    world = build_world(WorldSpec(corpus=CorpusSpec(max_tokens=2048, chunk_blocks=8)), [1, 2], device="cpu")
    r = wide_request(world, 20, seed=3)
    (holder, blocks), = world.directory.by_holder(r.blocks).items()
    assert len(r.blocks) == len(set(r.blocks)) == 20 and r.steps == 1
    chunks = [c for c in world.corpus.chunks if set(c.blocks(16)) & set(r.blocks)]
    assert len(chunks) == 3 and r.chunk == chunks[0].id  # two whole chunks of 8, then 4 of the next one
    assert wide_request(world, 10_000, seed=3) is None


def test_exchange_summary_takes_medians_per_exchange_and_skips_first_steps():
    from qroute.calibration.insitu_records import exchange_summary, route_exchanges

    def rec(step, layer, holder, wall, comp, first=False):
        return {"kind": "route", "step": step, "layer": layer, "holder": holder, "wall_s": wall, "rtt_s": wall,
                "holder_compute_s": comp, "payload_out": 100 * holder, "payload_back": 10, "parallel": 2,
                "first_step": first}  # fmt: skip

    trace = [rec(0, 0, 1, 9.0, 5.0, True), rec(0, 0, 2, 9.0, 5.0, True), {"kind": "splice", "seconds": 1.0}]
    trace += [rec(s, 0, h, 2.0 + s, 1.0 + s * (h - 1), False) for s in (1, 2, 3) for h in (1, 2)]
    ex = route_exchanges(trace)
    assert [len(e) for e in ex] == [2, 2, 2]  # the first step's exchange is left out
    got = exchange_summary(ex)
    assert got == {"holders": 2, "n": 3, "wall_s": 4.0, "compute_s": 3.0, "others_compute_s": 1.0, "bytes": 210}
    assert exchange_summary([]) is None


def test_exchange_summary_places_each_holders_compute_after_the_post_earliest_first():
    from qroute.calibration.insitu_records import exchange_summary, route_exchanges

    def rec(step, holder, start, comp):
        return {"kind": "route", "step": step, "layer": 0, "holder": holder, "wall_s": 9.0, "rtt_s": 9.0,
                "holder_compute_s": comp, "payload_out": 1, "payload_back": 1, "parallel": 2, "first_step": False,
                "t_post": 100.0 * step, "holder_start": 100.0 * step + start}  # fmt: skip

    trace = [rec(s, h, start, comp) for s in (1, 2, 3) for h, start, comp in ((1, 0.5 + s, 2.0), (2, 0.2, 1.0))]
    got = exchange_summary(route_exchanges(trace))
    assert got["start_s"] == pytest.approx([0.2, 2.5]) and got["end_s"] == pytest.approx([1.2, 4.5])
    trace[0]["holder_start"] = None  # a holder on another host (or an older one) says nothing of its start
    assert exchange_summary(route_exchanges(trace))["start_s"] == pytest.approx([0.2, 3.0])


def _exchange(step, nbytes, net, holders=1, compute=5e-4):
    """One warm route exchange of `holders` holders at once whose wall less the slowest compute is `net`."""
    recs = []
    for h in range(holders):
        recs.append({"kind": "route", "step": step, "layer": 0, "payload_out": nbytes // 2, "payload_back": nbytes // 2,
                     "rtt_s": net + compute, "wall_s": net + compute, "holder_compute_s": compute * (1 - 0.1 * h),
                     "parallel": holders, "first_step": False, "groups": [[1, 64 * (h + 1)]]})  # fmt: skip
    return recs


def test_stalls_per_exchange_and_their_size_are_recovered():
    """Two one-holder shapes (20 exchanges, 2 of them stalled by 4 ms) and one two-holder shape (20, 5 stalled by
    3 ms); a shape of 6 exchanges is too small to read; a 20% spread in the body is no stall. Stalls are counted
    per exchange, however long the exchanges (1 and 2 ms here)."""
    rng = np.random.default_rng(1)
    trace, step = [], 0
    for nbytes, net, holders, stalls, extra in ((8000, 1e-3, 1, 2, 4e-3), (64000, 2e-3, 1, 2, 4e-3),
                                                (64000, 2e-3, 2, 5, 3e-3), (9000, 1e-3, 1, 3, 9e-3)):  # fmt: skip
        count = 6 if nbytes == 9000 else 20
        for i in range(count):
            body = net * rng.uniform(0.9, 1.1)
            trace += _exchange(step, nbytes, body + (extra if i < stalls else 0.0), holders)
            step += 1
    ladder = []  # the idle ladder's requests: 20 more exchanges of a one-holder shape, half stalled, left out
    for i in range(20):
        ladder += [dict(r, ladder=True) for r in _exchange(step, 8000, 1e-3 + (4e-3 if i % 2 else 0.0))]
        step += 1
    assert stall_terms(trace + ladder) == stall_terms(trace)
    per, size, per_multi, size_multi, rate, rate_multi = stall_terms(trace)
    assert per == pytest.approx(4 / 40) and size == pytest.approx(4e-3, rel=0.05)
    assert per_multi == pytest.approx(5 / 20) and size_multi == pytest.approx(3e-3, rel=0.05)
    assert rate == rate_multi == 0.0  # two shapes, and one: no growth is read
    calm = [r for r in trace if r["payload_out"] != 4500]
    assert stall_terms([dict(r, wall_s=r["holder_compute_s"] + 1e-3) for r in calm]) == (0.0,) * 6


def _growing_stalls(shares, seed=3):
    """Two-holder shapes of 1, 2, 4 and 8 ms of network (60 exchanges each), `shares` of them stalled by 5 ms."""
    rng, trace, step = np.random.default_rng(seed), [], 0
    for net, share in zip((1e-3, 2e-3, 4e-3, 8e-3), shares):
        hits = set(rng.choice(60, size=round(60 * share), replace=False).tolist())
        for i in range(60):
            trace += _exchange(step, int(net * 1e9), net * rng.uniform(0.95, 1.05) + (5e-3 if i in hits else 0.0), 2)
            step += 1
    return trace


def test_stalls_that_grow_with_the_exchange_are_priced_per_second_too():
    """Two-holder shapes whose stalls grow with their seconds (2% + 20 per second of the exchange's wall, as two-holder
    gloo exchanges on the dev VM): the share and the rate per second come back, and a request of 8 short exchanges
    is priced no stall where 8 long ones are priced one. The same count of stalls at every length reads no growth."""
    walls = np.array([1e-3, 2e-3, 4e-3, 8e-3]) + 5e-4  # the network plus the slowest holder's compute
    per, size, per_multi, size_multi, rate, rate_multi = stall_terms(_growing_stalls(0.02 + 20 * walls))
    assert rate == 0.0 and rate_multi == pytest.approx(20, rel=0.3) and per_multi < 0.04
    assert size_multi == pytest.approx(5e-3, rel=0.1)
    path = PathSpec(1e-4, 1e9, stall_per_exchange_multi=per_multi, stall_rate_multi=rate_multi, stall_s_multi=size_multi)
    assert path.stalls_s(8, 2, 1.5e-3) == 0.0 and path.stalls_s(8, 2, 8.5e-3) == pytest.approx(size_multi)
    flat = stall_terms(_growing_stalls([0.1] * 4))
    assert flat[5] == 0.0 and flat[2] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("clustered", [True, False])
def test_stalls_that_come_in_clusters_are_priced_as_clusters(clustered):
    """30 requests (sessions) of 6 warm one-holder exchanges, 9 of the 180 stalled by 4 ms: in 3 requests 3 each
    (clustered) or in 9 requests one each. Clustered, a profile "stall" is a cluster: 10% of requests stall at all, so
    clusters start in 1 - 0.9^(1/6) of exchanges and each lasts 9/180 over that times 4 ms (the mean per exchange kept);
    spread out (more requests stall than independent stalls would give), one stall each at 9/180 of exchanges."""
    rng, trace, step = np.random.default_rng(2), [], 0
    hit = {0: 3, 1: 3, 2: 3} if clustered else {i: 1 for i in range(9)}
    for session in range(30):
        for i in range(6):
            extra = 4e-3 if i < hit.get(session, 0) else 0.0
            trace += [dict(r, sessions=[session]) for r in _exchange(step, 8000, 1e-3 * rng.uniform(0.95, 1.05) + extra)]
            step += 1
    per, size, *_ = stall_terms(trace)
    if clustered:
        q = 1 - 0.9 ** (1 / 6)
        assert per == pytest.approx(q, rel=1e-6) and size == pytest.approx(4e-3 * (9 / 180) / q, rel=0.05)
        assert per * size == pytest.approx(9 / 180 * 4e-3, rel=0.05)  # the mean per exchange: every stall's
    else:
        assert per == pytest.approx(9 / 180) and size == pytest.approx(4e-3, rel=0.05)
    anonymous = [{k: v for k, v in r.items() if k != "sessions"} for r in trace]  # records before profile/10
    assert stall_terms(anonymous)[0] == pytest.approx(9 / 180)


@pytest.mark.parametrize("reply", [0.0, 9e-5])
def test_a_fetched_replys_handling_is_what_its_adapt_records_pay_beyond_splice_and_gather(reply):
    """Requests of 1-2 fetched holders, scattered or not, with splices of many sizes and a few 4 ms stalls: the
    per-reply excess comes back, and a trace whose excess is negative prices none."""
    rng = np.random.default_rng(3)
    trace = []
    for i in range(40):
        fetched, splice = 1 + i % 2, rng.uniform(1e-4, 2e-3)
        gather = rng.uniform(5e-5, 5e-4) if i % 3 == 0 else 0.0
        stall = 4e-3 if i % 13 == 5 else 0.0
        seconds = splice + gather + fetched * reply * (1 + rng.normal(0, 0.02)) + stall
        trace.append({"kind": "adapt", "seconds": seconds, "fetched": fetched, "splice_s": splice, "gather_s": gather})
    trace.append({"kind": "splice", "seconds": 1.0, "tokens": 64, "layers": 2})  # other records are not read
    fits: dict = {}
    assert reply_excess(trace, fits) == pytest.approx(reply, abs=3e-6)
    assert fits["reply"]["requests"] == 40
    faster = [{**r, "seconds": r["splice_s"] * 0.9} for r in trace if r["kind"] == "adapt"]
    assert reply_excess(faster) == 0.0 and reply_excess([]) == 0.0


def _first_step_trace(excess, rise=0.0, tau=0.05, seed=5):
    """Six requests of four decode steps per shape, over shapes whose compute differs 8x; the first step `excess` +
    `rise` (1 - exp(-idle / `tau`)) longer, the holder idle 0.5-4 ms before most requests and 10-300 ms before some;
    a stall in some records, and a parallel exchange per shape (counts none)."""
    rng = np.random.default_rng(seed)
    trace, n = [], 0
    for i, (rows, tokens) in enumerate([(16, 64), (16, 512), (64, 64), (64, 512)]):
        base = 1e-4 + rows * tokens * 2e-9
        for request in range(6):
            idle = (0.01, 0.03, 0.1, 0.3)[(request + i) % 4] if request % 2 else rng.uniform(5e-4, 4e-3)
            for step in range(4):
                n += 1
                for layer in range(2):
                    first = excess + rise * -np.expm1(-idle / tau) if step == 0 else 0.0
                    seconds = base * (1 + first) * (1 + rng.normal(0, 0.01))
                    seconds += 4e-3 if (request + layer + i) % 11 == 0 and step else 0.0
                    trace.append({"kind": "route", "groups": [[rows, tokens]], "holder_compute_s": seconds, "step": n,
                                  "layer": layer, "first_step": step == 0, "parallel": 1,
                                  "idle_s": idle if layer == 0 else 1e-4})  # fmt: skip
        trace.append({"kind": "route", "groups": [[rows, tokens]], "holder_compute_s": 1.0, "first_step": True,
                      "parallel": 2, "step": n, "layer": 0})  # fmt: skip
    return trace


@pytest.mark.parametrize("excess", [0.0, 0.1])
def test_a_holders_first_step_excess_is_read_shape_by_shape(excess):
    """Without idle times in the trace: the first step's relative excess comes back whatever the shape's size, with
    a stall in some records; parallel exchanges and a faster first step count none."""
    trace = [{k: v for k, v in r.items() if k != "idle_s"} for r in _first_step_trace(excess)]
    fits: dict = {}
    assert first_step_excess(trace, fits) == (pytest.approx(excess, abs=0.01), ()) and fits["first_step"]["steps"] == 24
    faster = [{**r, "first_step": not r["first_step"]} for r in trace]  # what was warm is now the first step
    assert first_step_excess(faster)[0] == pytest.approx(0.0, abs=0.01)  # never negative
    assert first_step_excess([r for r in trace if not r["first_step"]]) == (0.0, ())


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_a_first_step_that_grows_with_the_holders_idle_time_is_recovered(seed):
    """The first step 8% longer after a short idle and 20% more after a long one (time scale 50 ms): the price after
    each idle time the trace has comes back."""
    flat, curve = first_step_excess(_first_step_trace(0.08, 0.2, 0.05, seed))
    coeffs = AttentionCoeffs(1e-4, 1e9, 1e12, first_step_excess=flat, first_step_idle=curve)
    for idle in (0.002, 0.01, 0.03, 0.1, 0.3):
        assert coeffs.first_step_at(idle) == pytest.approx(0.08 + 0.2 * -np.expm1(-idle / 0.05), abs=0.03)
    assert coeffs.first_step_at(None) == flat


@pytest.mark.parametrize("excess", [0.0, 0.12])
def test_the_slowest_of_parallel_holders_excess_is_read_shape_by_shape(excess):
    """Shapes whose compute differs 8x, each asked alone and two or three holders at once: the slowest holder of an
    exchange attends `excess` longer per holder beyond the first; it comes back whatever the shape, with stalls in
    some records. First steps, a shape never asked alone and a faster parallel exchange count none."""
    rng = np.random.default_rng(11)
    trace, step = [], 0
    shapes = [(16, 64), (16, 512), (64, 64), (64, 512)]
    rec = lambda k, sec, n, first=False: {"kind": "route", "run": 0, "step": step, "layer": 0,  # noqa: E731
                                          "groups": [list(shapes[k])], "holder_compute_s": sec, "parallel": n,
                                          "first_step": first}  # fmt: skip
    base = [1e-4 + r * t * 2e-9 for r, t in shapes]
    for rep in range(12):
        for k in range(len(shapes)):
            stall = 4e-3 if (rep + k) % 7 == 0 else 0.0
            trace.append(rec(k, base[k] * (1 + rng.normal(0, 0.01)) + stall, 1))
            step += 1
            for n in (2, 3):  # the slowest holder pays the excess, the others less; one pair of shapes k and 0
                slowest = base[k] * (1 + (n - 1) * excess) * (1 + rng.normal(0, 0.01))
                trace += [rec(k, slowest, n)] + [rec(k, base[k] * 0.9, n) for _ in range(n - 2)] + [rec(k, base[k] * 0.8, n)]
                step += 1
            trace.append(rec(k, 10 * base[k], 2, first=True))  # a first step: priced by `first_step_excess`
            step += 1
    trace += [{**rec(0, 1.0, 2), "groups": [[7, 7]]}, {**rec(0, 1.0, 2), "groups": [[16, 64]]}]  # (7, 7): never alone
    fits: dict = {}
    assert parallel_excess(trace, fits) == pytest.approx(excess, abs=0.01) and fits["parallel_compute"]["shapes"] == 8
    faster = [{**r, "holder_compute_s": r["holder_compute_s"] * 0.5} if r["parallel"] > 1 else r for r in trace]
    assert parallel_excess(faster) == 0.0  # never negative
    assert parallel_excess([r for r in trace if r["parallel"] == 1]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fetches_at_their_own_rate_get_their_own_line(seed):
    """Fetches move bytes at half the route exchanges' rate, 150 us beyond their probe: the route line keeps route's
    constants (through one line with an offset, the fetches would tilt it), the fetches get their own rate and
    offset, and the fit report carries their points."""
    alpha, beta, offset, fetch_beta = 5e-4, 2e9, 1.5e-4, 1e9
    spec, fit = fit_path_from_trace(synthetic_trace(alpha, beta, 0.0, 0.0, seed, fetch_offset=offset, fetch_beta=fetch_beta), "s")
    assert spec.alpha_s == pytest.approx(alpha, rel=0.05) and spec.beta_Bps == pytest.approx(beta, rel=0.05)
    assert spec.fetch_beta_Bps == pytest.approx(fetch_beta, rel=0.05)
    assert spec.fetch_offset_s == pytest.approx(offset, abs=0.1 * alpha)
    for b in np.geomspace(4e3, 1.6e7, 5):
        assert spec.fetch_time(b) == pytest.approx(alpha + offset + b / fetch_beta, rel=0.03)
        assert spec.time(b) == pytest.approx(alpha + b / beta, rel=0.03)
    report = dict(fit.extra)["fetch"]
    assert len(report["points"]) == 4 and max(map(abs, report["rel_residuals"])) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fetch_moved_in_chunks_pays_each_chunks_hand_off(seed):
    """A path that moves a message in 1 MiB chunks, each read before the next is written (the shared-memory path):
    fetches at sizes around the chunk boundaries pay 250 us per chunk beyond the first. Told the chunk size, the fit
    recovers the rate and the hand-off and prices every fetch within 3%; a stream path (no chunk size) gets none."""
    alpha, beta, fetch_beta, hand_off, chunk = 5e-4, 2e9, 3e9, 2.5e-4, 1 << 20
    rng = np.random.default_rng(seed)
    trace = _insitu_line(alpha, beta, seed)
    trace = [r for r in trace if r["kind"] != "fetch"]
    sizes = (np.array([0.3, 0.6, 0.9, 1.2, 1.8, 2.5, 4.0, 8.0]) * chunk).astype(int)
    truth = lambda b: alpha + b / fetch_beta + max(np.ceil(b / chunk) - 1, 0) * hand_off  # noqa: E731
    for b in sizes:
        for _ in range(3):
            trace.append({"kind": "fetch", "bytes": int(b), "parallel": 1, "holder_compute_s": 0.0,
                          "rtt_s": truth(b) * (1 + rng.normal(0, 0.01))})  # fmt: skip
    spec, fit = fit_path_from_trace(trace, "s", chunk_bytes=chunk)
    assert spec.chunk_bytes == chunk and spec.chunk_s == pytest.approx(hand_off, rel=0.2)
    assert spec.fetch_beta_Bps == pytest.approx(fetch_beta, rel=0.08)
    for b in sizes:
        assert spec.fetch_time(b) == pytest.approx(truth(b), rel=0.03)
    assert dict(fit.extra)["fetch"]["chunk_s"] == spec.chunk_s
    stream, _ = fit_path_from_trace(trace, "s")
    assert stream.chunk_bytes is None and stream.chunk_s == 0.0
    assert max(abs(stream.fetch_time(b) / truth(b) - 1) for b in sizes) > 0.05  # one line misses the steps


def test_a_records_idle_time_is_the_planners_where_it_planned():
    assert idle_of({"planned_idle_s": 0.004, "idle_s": 0.011}) == 0.004  # the planner priced the wake-up from this
    assert idle_of({"planned_idle_s": None, "idle_s": 0.011}) == 0.011
    assert idle_of({"idle_s": None}) == 0.0 and idle_of({}) == 0.0


def _concave_trace(seed, sizes):
    """Warm one-holder route exchanges whose seconds are concave in size (as gloo's in situ on the dev VM), 12 per
    size with 1% noise and a 4 ms stall now and then, and fetches on a line."""
    rng = np.random.default_rng(seed)
    curve = lambda b: 4e-4 + 1.2e-6 * np.sqrt(b)  # noqa: E731
    trace = []
    for i, b in enumerate(sizes):
        for step in range(12):
            stall = 4e-3 if rng.random() < 0.05 else 0.0
            trace.append(_route(rng, 100 * i + step, 0, int(b), curve(b) * (1 + rng.normal(0, 0.01)) + stall, False))
    for b in np.geomspace(1.5e5, 4e6, 4).astype(int):
        trace.append({"kind": "fetch", "bytes": int(b), "parallel": 1, "holder_compute_s": 0.0, "rtt_s": 5e-4 + b / 1e9})
    return trace, curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knots_follow_in_situ_exchanges_that_one_line_does_not(seed):
    sizes = np.array([7e4, 1.4e5, 4.2e5, 5.6e5, 1.7e6, 5e6])
    trace, curve = _concave_trace(seed, sizes)
    spec, fit = fit_path_from_trace(trace, "synthetic")
    assert [k[0] for k in spec.knots] == list(sizes) and dict(fit.extra)["knots"] == [list(k) for k in spec.knots]
    line = replace(spec, knots=())
    between = np.sqrt(sizes[1:] * sizes[:-1])  # sizes no request of the trace had
    knot_err = np.abs(spec.time(between) / curve(between) - 1)
    line_err = np.abs(line.time(between) / curve(between) - 1)
    assert knot_err.max() < 0.04 and knot_err.max() < line_err.max() / 2
    assert np.allclose(spec.time(sizes), curve(sizes), rtol=0.02)  # stalls left out of each size's median


def test_knots_are_non_decreasing_and_absent_without_a_span():
    from qroute.calibration.insitu import route_knots

    assert route_knots({(7e4,): 7e-4, (1.4e5,): 9e-4, (4.2e5,): 8e-4, (1e6,): 1.2e-3}) == (
        (7e4, 7e-4), (1.4e5, pytest.approx(8.5e-4)), (4.2e5, pytest.approx(8.5e-4)), (1e6, 1.2e-3))  # fmt: skip
    assert route_knots({(7e4,): 7e-4, (1e5,): 8e-4, (2e5,): 9e-4}) == ()  # spans under 4x: the line alone
    assert route_knots({(7e4,): 7e-4, (1e6,): 9e-4}) == ()  # two sizes: the line alone


@pytest.mark.parametrize("extra", [0.0, 3e-4])
def test_scattered_fetches_price_their_extra_apart_and_leave_the_fetch_line_to_contiguous_ones(extra):
    """Scattered fetches (every other block) that cost `extra` more than contiguous ones of their bytes (two H100s:
    133-333 us) give `fetch_scatter_s` back; the line is the contiguous fetches', so a contiguous fetch is priced as
    before and a scattered selection (`fetch_fixed_s(b, scattered=True)`) pays the extra. Without scattered fetches
    (or with one size of them) the term stays 0."""
    alpha, beta, offset = 5e-4, 1e9, 2e-4
    trace = synthetic_trace(alpha, beta, 0.0, 1e-4, seed=11, fetch_offset=offset)
    rng = np.random.default_rng(5)
    for b in np.geomspace(2e5, 1.5e6, 4).astype(int):
        for _ in range(5):
            trace.append({"kind": "fetch", "bytes": int(b), "parallel": 1, "holder_compute_s": 5e-5, "scattered": True,
                          "rtt_s": (alpha + b / beta) * (1 + rng.normal(0, 0.01)) + offset + extra + 5e-5})  # fmt: skip
    spec, _ = fit_path_from_trace(trace, "synthetic")
    assert spec.fetch_scatter_s == pytest.approx(extra, abs=0.03 * (alpha + 1e6 / beta))
    assert spec.fetch_time(1e6) == pytest.approx(alpha + offset + 1e6 / beta, rel=0.05)  # the contiguous line
    assert spec.fetch_fixed_s(1e6, scattered=True) - spec.fetch_fixed_s(1e6) == pytest.approx(spec.fetch_scatter_s)
    one_size = [r for r in trace if not (r.get("scattered") and r["bytes"] != trace[-1]["bytes"])]
    assert fit_path_from_trace(one_size, "synthetic")[0].fetch_scatter_s == 0.0
