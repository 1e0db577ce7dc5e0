"""Fitting recovers known constants from synthetic timings with noise and outliers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.calibration.fit import HUGE_RATE, fit_idle_curve, nonneg_lstsq, rate, robust_median
from qroute.errors import QrouteError


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(1e-6, 1e-3), beta=st.floats(1e8, 1e11), seed=st.integers(0, 2**32 - 1))
def test_path_constants_recovered_through_noise_and_stalls(alpha, beta, seed):
    rng = np.random.default_rng(seed)
    # a sweep as calibration runs it: from tiny messages up to where the bytes term dominates alpha
    top = max(4 << 20, 20 * alpha * beta)
    sizes = np.geomspace(8, top, 6)
    medians = []
    for b in sizes:
        t = (alpha + b / beta) * (1 + rng.normal(0, 0.01, size=41))
        t[rng.choice(41, size=6, replace=False)] += 4e-3  # the scheduler's 4 ms mode
        medians.append(robust_median(t))
    fit = nonneg_lstsq(np.stack([np.ones_like(sizes), sizes], axis=1), np.array(medians))
    assert fit.coef[0] == pytest.approx(alpha, rel=0.05, abs=2e-7)
    assert rate(fit.coef[1]) == pytest.approx(beta, rel=0.05)


def test_negative_coefficients_are_dropped_and_refitted():
    x = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    y = np.array([3.0, 2.0, 1.0])  # decreasing: a positive slope cannot fit, the slope is dropped
    fit = nonneg_lstsq(x, y)
    assert fit.coef[1] == 0 and fit.coef[0] > 0
    assert rate(fit.coef[1]) == HUGE_RATE


def test_robust_median_ignores_stalls_and_rejects_empty():
    assert robust_median([1.0, 1.1, 0.9, 1.0, 50.0, 60.0]) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(QrouteError):
        robust_median([])
    with pytest.raises(QrouteError, match="at least as many samples"):
        nonneg_lstsq(np.ones((1, 2)), np.ones(1))


@pytest.mark.parametrize("seed", range(8))
def test_small_message_regime_found_when_present_and_not_invented(seed):
    from qroute.calibration.fit import fit_path

    rng = np.random.default_rng(seed)
    sizes = np.geomspace(16, 16e6, 12)
    true = np.where(sizes < 2e5, 30e-6 + sizes / 1e9, 120e-6 + sizes / 4e9)
    noisy = true * (1 + rng.normal(0, 0.01, sizes.size))
    fit = fit_path(sizes, noisy)
    assert fit.knee_bytes is not None and 1e5 < fit.knee_bytes < 4e5
    assert fit.small_alpha_s == pytest.approx(30e-6, rel=0.1) and fit.alpha_s == pytest.approx(120e-6, rel=0.1)
    assert fit.beta_Bps == pytest.approx(4e9, rel=0.1)
    assert fit.p90_ape < 0.03
    line = fit_path(sizes, (50e-6 + sizes / 2e9) * (1 + rng.normal(0, 0.01, sizes.size)))
    assert line.knee_bytes is None and line.beta_Bps == pytest.approx(2e9, rel=0.05)


@pytest.mark.parametrize("seed", range(8))
def test_rate_shaped_link_priced_by_its_rate_despite_token_bucket_bursts(seed):
    """A tbf link: beyond its bucket an exchange costs bytes / rate; below it, exchanges that find the bucket full
    run 2-3x faster, others not. The p90 stays high whatever the split; the large exchanges must still get the rate."""
    from qroute.calibration.fit import fit_path

    rng = np.random.default_rng(seed)
    sizes = np.geomspace(7e4, 2.2e6, 12)
    rate_Bps = 25e6
    true = 0.7e-3 + sizes / rate_Bps
    burst = (sizes < 5e5) & (np.arange(sizes.size) % 2 == 0)  # every other small exchange finds the bucket full
    seconds = np.where(burst, true / rng.uniform(2.0, 3.0, sizes.size), true) * (1 + rng.normal(0, 0.02, sizes.size))
    fit = fit_path(sizes, seconds)
    assert fit.beta_Bps == pytest.approx(rate_Bps, rel=0.1)
    assert fit.knee_bytes is not None and 2e5 < fit.knee_bytes < 1.2e6
    one = nonneg_lstsq(np.stack([np.ones_like(sizes), sizes], axis=1), seconds)  # what one line would price them at
    assert np.median(np.abs(one.rel_residuals)) > 0.10  # the case the median rule is for


def test_repeat_spread_reports_constants_and_what_they_predict():
    from qroute.calibration.calibrate import spread
    from qroute.calibration.fit import PathFit

    points = ((1e5, 1.0e-3), (1e6, 1.5e-3))
    # two lines crossing between the points: beta moves by 13%, the predicted exchanges by under 5%
    a = PathFit(0.90e-3, 1.8e9, None, None, None, np.zeros(2), points)
    b = PathFit(0.95e-3, 2.05e9, None, None, None, np.zeros(2), points)
    s = spread([a, b])
    assert s["alpha_rel_spread"] == pytest.approx(0.05 / 0.925) and s["beta_rel_spread"] == pytest.approx(0.25 / 1.925)
    t = [tuple(x.alpha_s + n / x.beta_Bps for x in (a, b)) for n in (1e5, 1e6)]
    assert s["time_sizes"] == [1e5, 1e6]
    assert s["time_rel_spreads"] == pytest.approx([abs(u - v) / ((u + v) / 2) for u, v in t])
    assert s["time_rel_spread"] == max(s["time_rel_spreads"]) < 0.05
    assert spread([a])["time_rel_spread"] == 0.0 and "time_rel_spread_at_speed" not in s


def test_repeat_spread_at_one_speed_takes_out_the_machines_own_move():
    """The second repeat ran on a machine 30% slower (its probes say so) and fitted a line 30% slower: apart 30%,
    the same at one speed; a fit that moved without the machine's speed moving stays apart."""
    from qroute.calibration.calibrate import run_speeds, spread
    from qroute.calibration.fit import PathFit

    points = ((1e5, 1.0e-3), (1e6, 1.5e-3))
    a = PathFit(0.9e-3, 1.8e9, None, None, None, np.zeros(2), points)
    slow = PathFit(1.3 * 0.9e-3, 1.8e9 / 1.3, None, None, None, np.zeros(2), points)
    probes = [{"route": 1e-2}, {"route": 1e-2}, {"route": 1.2e-2}, {"route": 1.4e-2}]
    speeds = run_speeds(probes, 2)
    assert speeds == pytest.approx([1e-2, 1.3e-2])
    s = spread([a, slow], speeds)
    assert s["time_rel_spread"] == pytest.approx(0.3 / 1.15) and s["time_rel_spread_at_speed"] == pytest.approx(0.0, abs=1e-12)
    assert spread([a, slow], [1e-2, 1e-2])["time_rel_spread_at_speed"] == pytest.approx(0.3 / 1.15)
    assert run_speeds(probes[:3], 2) is None


def test_speed_spread_is_the_widest_primitive_move_between_probes():
    from qroute.calibration.fit import speed_spread

    steady = {"route": 2.0e-3, "fetch": 1.0e-3, "local": 4.0e-3}
    assert speed_spread([]) == 0.0 and speed_spread([steady]) == 0.0
    assert speed_spread([steady, dict(steady)]) == 0.0
    slower = {"route": 2.1e-3, "fetch": 1.3e-3, "local": 4.0e-3}  # fetch moved 30%: route's 5% does not count
    assert speed_spread([steady, slower, steady]) == pytest.approx(0.3e-3 / 1.0e-3)


def test_validation_reports_the_calibrations_speed_spread_per_path():
    from qroute.calibration.validate import calibration_speed_spread

    probes = [{"route": 1.0, "local": 3.0}, {"route": 1.2, "local": 3.0}]
    assert calibration_speed_spread({"fits": {"speed_probes": {"shm": probes}}}) == {"shm": pytest.approx(0.2 / 1.1)}
    assert calibration_speed_spread({"fits": {}}) == {} and calibration_speed_spread({}) == {}  # older profiles


def test_an_idle_curve_is_binned_made_non_decreasing_and_needs_a_span():
    rng = np.random.default_rng(3)
    idle = np.repeat([0.002, 0.01, 0.03, 0.1, 0.3], 5)
    values = np.repeat([50e-6, 40e-6, 500e-6, 480e-6, 520e-6], 5) * (1 + rng.normal(0, 0.01, 25))
    values[7] = 1.0  # a stall: the bin's robust median ignores it
    curve = fit_idle_curve(idle, values)
    assert [t for t, _ in curve] == pytest.approx([0.002, 0.01, 0.03, 0.1, 0.3])
    # 50 then 40 us, and 500 then 480 us, are pooled: a holder idle longer wakes no faster
    assert [v for _, v in curve] == pytest.approx([45e-6, 45e-6, 490e-6, 490e-6, 520e-6], rel=0.03)
    assert fit_idle_curve(idle[:10], values[:10]) == ()  # 2 to 10 ms: under a 10x span
    assert fit_idle_curve(idle[::5], values[::5]) == ()  # one sample per bin: none has 3
    assert fit_idle_curve([], []) == ()
    assert all(v == 0.0 for _, v in fit_idle_curve(idle, -values))  # never below 0
    with pytest.raises(QrouteError, match="one value per idle time"):
        fit_idle_curve(idle, values[:3])


def test_tail_mean_keeps_a_moderate_tail_and_drops_long_stalls():
    from qroute.calibration.fit import TAIL_CAP, tail_mean

    body = [1.0] * 16 + [1.5] * 4  # a fifth of the samples 1.5x: the mean 1.1x, the median 1.0x
    assert tail_mean(body) == pytest.approx(1.1)
    assert tail_mean(body + [TAIL_CAP * 1.01, 40.0]) == pytest.approx(1.1)  # beyond the cap: stalls
    assert tail_mean(body + [TAIL_CAP]) == pytest.approx((22 + TAIL_CAP) / 21)
    with pytest.raises(QrouteError, match="no timing samples"):
        tail_mean([])
