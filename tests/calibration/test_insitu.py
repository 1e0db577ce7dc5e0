"""In-situ fits recover known path constants (alpha, beta, wake-up, per-holder extra) from synthetic traces."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.calibration.insitu import cold_excess, fit_path_from_trace, per_holder_excess
from qroute.cost.profile import PathSpec


def _route(rng, step, layer, nbytes, seconds, first, parallel=1, hc=None):
    hc = rng.uniform(1e-4, 5e-4) if hc is None else hc
    return {"kind": "route", "step": step, "layer": layer, "payload_out": nbytes // 2, "payload_back": nbytes - nbytes // 2,
            "rtt_s": seconds + hc, "holder_compute_s": hc, "parallel": parallel, "first_step": first}  # fmt: skip


def synthetic_trace(alpha, beta, cold, per_holder, seed, layers=2, steps=3, stall=4e-3):
    """Requests as calibration serves them: per size one request of `steps` steps x `layers` layers (the first step
    pays `cold` on its first layer), fetches (always cold), and pairs of holders asked at once."""
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
            for layer in range(layers):  # two holders at once, warm
                hcs = rng.uniform(1e-4, 5e-4, 2)
                wall = (alpha + 2 * b / beta + per_holder) * noise() + hcs.max()
                for h in range(2):
                    rec = _route(rng, step, layer, int(b), 0.0, False, parallel=2, hc=hcs[h])
                    rec["rtt_s"] = wall if h == 1 else wall * 0.8
                    trace.append(rec)
            step += 1
        for b in sizes[::2] * 8:
            gather = rng.uniform(0, 1e-4)
            trace.append({"kind": "fetch", "bytes": int(b), "parallel": 1, "holder_compute_s": gather,
                          "rtt_s": (alpha + b / beta) * noise() + cold + gather, "tokens": 1, "layers": 1})  # fmt: skip
    return trace


@settings(max_examples=20, deadline=None)
@given(alpha=st.floats(2e-5, 1e-3), beta=st.floats(3e8, 2e10), cold=st.floats(0, 2e-3),
       per_holder=st.floats(0, 5e-4), seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_path_constants_and_wake_up_recovered_from_a_trace(alpha, beta, cold, per_holder, seed):
    spec, fit = fit_path_from_trace(synthetic_trace(alpha, beta, cold, per_holder, seed), "synthetic")
    assert spec.alpha(4e3) + 4e3 / spec.beta(4e3) == pytest.approx(alpha + 4e3 / beta, rel=0.05)
    assert spec.time(2e6) == pytest.approx(alpha + 2e6 / beta, rel=0.05)
    scale = alpha + 4e3 / beta  # the wake-up and per-holder terms are read against one small exchange
    assert spec.cold_s == pytest.approx(cold, abs=0.05 * scale + 0.02 * cold)
    assert spec.per_holder_s == pytest.approx(per_holder, abs=0.1 * scale + 0.05 * per_holder)
    assert fit.median_ape < 0.03


def test_no_first_steps_and_no_parallel_exchanges_price_nothing():
    rng = np.random.default_rng(0)
    warm = [_route(rng, i, 0, 8000, 1e-4, False) for i in range(5)]
    assert cold_excess(warm) == 0.0
    assert per_holder_excess(warm, PathSpec(1e-4, 1e9)) is None


def test_a_first_step_faster_than_later_ones_prices_no_negative_wake_up():
    rng = np.random.default_rng(1)
    trace = [_route(rng, s, 0, 8000, 1e-4 if s % 3 == 0 else 2e-4, s % 3 == 0) for s in range(12)]
    assert cold_excess(trace) == 0.0
