"""Fitting the cost model's constants from timings: robust summaries and non-negative least squares.

Pure functions (no clocks): measurement code hands them (features, seconds) samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qroute.errors import QrouteError

HUGE_RATE = 1e18  # a coefficient fitted to zero: the term is not measurable here


def robust_median(samples) -> float:
    """Median after dropping samples above `median + 5 * MAD` (scheduler stalls, GC pauses)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise QrouteError("no timing samples: expected at least one")
    med = np.median(x)
    mad = np.median(np.abs(x - med)) or 1e-12
    return float(np.median(x[x <= med + 5 * mad]))


TAIL_CAP = 3.0  # x the median: samples above are stalls (`tail_mean`)


def tail_mean(samples) -> float:
    """Mean of the samples at most `TAIL_CAP` x their median: the body with its frequent moderate tail, without the
    rare long stalls. What a sum of many such timings grows by per term, where the median is what one takes alone.
    On the dev VM (a `calibrate --quick` trace, 2026-11-26) 8% of a shape's merges and 17% of its attentions over
    moved KV lay above `robust_median`'s cut (median + 5 MAD), and their mean was 1.05x the median (1.01x without
    that tail); the validations of that day priced requests' merges 3-12% low and their compute 1-7% low. Not for a
    timing taken once per request from few samples (a re-prefill: one slow one of three moves the mean 40%)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise QrouteError("no timing samples: expected at least one")
    return float(np.mean(x[x <= TAIL_CAP * np.median(x)]))


@dataclass(frozen=True)
class LinearFit:
    """`y ~ X @ coef` with coef >= 0; residuals relative to y."""

    coef: np.ndarray
    rel_residuals: np.ndarray

    @property
    def median_ape(self) -> float:
        return float(np.median(np.abs(self.rel_residuals)))

    @property
    def max_ape(self) -> float:
        return float(np.max(np.abs(self.rel_residuals)))


def nonneg_lstsq(X, y, relative: bool = True) -> LinearFit:
    """Least squares with non-negative coefficients (columns fitted negative are dropped and refitted).

    `relative`: minimise relative rather than absolute error, so small messages and short
    kernels weigh as much as large ones.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < X.shape[1]:
        raise QrouteError(f"fit needs at least as many samples as unknowns: got X {X.shape}, y {y.shape}")
    w = 1.0 / np.maximum(y, 1e-12) if relative else np.ones_like(y)
    active = np.ones(X.shape[1], dtype=bool)
    coef = np.zeros(X.shape[1])
    while active.any():
        sol, *_ = np.linalg.lstsq(X[:, active] * w[:, None], y * w, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active[np.flatnonzero(active)[np.argmin(sol)]] = False
    pred = X @ coef
    return LinearFit(coef, (pred - y) / np.maximum(y, 1e-12))


def rate(inverse: float) -> float:
    """A rate from a fitted seconds-per-unit coefficient (0 -> not measurable -> huge)."""
    return HUGE_RATE if inverse <= 0 else float(1.0 / inverse)


@dataclass(frozen=True)
class PathFit:
    """alpha + bytes / beta, with a small-message regime below `knee_bytes` when that fits markedly better."""

    alpha_s: float
    beta_Bps: float
    small_alpha_s: float | None
    small_beta_Bps: float | None
    knee_bytes: float | None
    rel_residuals: np.ndarray
    points: tuple = ()  # (bytes, seconds) fitted, by ascending size
    origins: tuple = ()  # where each point came from, when the caller says so
    extra: tuple = ()  # (name, value) pairs the caller adds to the report (e.g. the parallel-exchange fit)

    @property
    def median_ape(self) -> float:
        return float(np.median(np.abs(self.rel_residuals)))

    @property
    def p90_ape(self) -> float:
        return float(np.percentile(np.abs(self.rel_residuals), 90))

    def report(self) -> dict:
        return {"alpha_s": self.alpha_s, "beta_Bps": self.beta_Bps, "knee_bytes": self.knee_bytes,
                "small_alpha_s": self.small_alpha_s, "small_beta_Bps": self.small_beta_Bps,
                "median_ape": self.median_ape, "p90_ape": self.p90_ape,
                "rel_residuals": [float(r) for r in self.rel_residuals],
                "points": [[float(b), float(t)] for b, t in self.points], "origins": list(self.origins),
                **dict(self.extra)}  # fmt: skip


def _line(b: np.ndarray, t: np.ndarray) -> LinearFit:
    return nonneg_lstsq(np.stack([np.ones_like(b), b], axis=1), t)


MEDIAN_MISS = 0.10  # one line missing the typical size by this much is wrong, whatever its p90


def fit_path(exchange_bytes, seconds, min_points: int = 3, floor: float = 0.03, gain: float = 0.5) -> PathFit:
    """Fit a path's constants to round-trip medians at several exchange sizes (bytes out + back).

    One alpha-beta line, or two (a small-message regime below a knee between two measured
    sizes). Two are kept only where one line misses (p90 relative error above `floor`) and
    two cut that error by `gain` or more: noise around a clean line does not invent a regime.
    Or where one line misses even the median size by `MEDIAN_MISS` and two cut the median
    error by `gain`: a rate-shaped link whose token bucket makes some mid-size exchanges fast
    and others not (measured on a tbf link: 1.7 ms and 4.8 ms at 147 KB and 139 KB) leaves a
    p90 that no split cuts, while one line through it misprices every large exchange by 40%.
    """
    b = np.asarray(exchange_bytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    order = np.argsort(b)
    b, t = b[order], t[order]
    points = tuple(zip(b.tolist(), t.tolist()))
    one = _line(b, t)
    line = best = PathFit(float(one.coef[0]), rate(one.coef[1]), None, None, None, one.rel_residuals, points)
    if line.p90_ape <= floor:
        return line
    typical = line
    for k in range(min_points, len(b) - min_points + 1):
        lo, hi = _line(b[:k], t[:k]), _line(b[k:], t[k:])
        cand = PathFit(float(hi.coef[0]), rate(hi.coef[1]), float(lo.coef[0]), rate(lo.coef[1]),
                       float(np.sqrt(b[k - 1] * b[k])), np.concatenate([lo.rel_residuals, hi.rel_residuals]), points)  # fmt: skip
        best = cand if cand.p90_ape < best.p90_ape else best
        typical = cand if cand.median_ape < typical.median_ape else typical
    if best.p90_ape <= (1 - gain) * line.p90_ape:
        return best
    return typical if line.median_ape > MEDIAN_MISS and typical.median_ape <= (1 - gain) * line.median_ape else line


UNSTEADY = 0.10  # speed probes spread wider than this during one calibration: its constants describe no one speed


def rel_spread(values) -> float | None:
    """(max - min) / median: how far repeated measurements of one quantity disagree; None for fewer than 2 values
    or a median of 0."""
    values = [float(v) for v in values]
    middle = float(np.median(values)) if values else 0.0
    return (max(values) - min(values)) / middle if len(values) > 1 and middle > 0 else None


def speed_spread(probes: list[dict[str, float]]) -> float:
    """How far the machine's speed moved during a calibration: the speed probes' seconds, taken before and after
    each training repeat, (max - min) / median per primitive, the largest (0 with fewer than 2 probes).
    The fitted constants mix every speed the training ran at; validation's drift correction compares against
    the probes' median."""
    if len(probes) < 2:
        return 0.0
    spreads = [rel_spread([p[primitive] for p in probes]) for primitive in probes[0]]
    return max((s for s in spreads if s is not None), default=0.0)


IDLE_BIN = 2.0  # idle times within a factor of 2 share a bin (its robust median); 1 ms and below share the first
IDLE_SPAN = 10.0  # a curve only where its bins' idle times span this factor
IDLE_MIN_SAMPLES = 3  # samples a bin needs


def fit_idle_curve(idle, values) -> tuple[tuple[float, float], ...]:
    """How a wake-up cost grows with how long the holder sat idle, as (idle seconds, value) points: per bin of idle
    time (`IDLE_BIN`, `IDLE_MIN_SAMPLES` or more samples) its median idle and robust median value, made
    non-decreasing over idle (pool adjacent violators, weighted by the bins' samples: a holder idle longer wakes no
    faster) and never below 0. Empty where fewer than 2 bins span `IDLE_SPAN` x (no idle times: one bin).
    Measured on the dev VM (gloo): 66 us at 11 ms idle, 545-568 us from 24 to 312 ms: a step, not an exponential."""
    idle, values = np.asarray(idle, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if idle.shape != values.shape:
        raise QrouteError(f"idle times {idle.shape} and values {values.shape}: expected one value per idle time")
    bins = np.floor(np.log(np.maximum(idle, 1e-3) / 1e-3) / np.log(IDLE_BIN)).astype(int)
    keys = [k for k in sorted(set(bins.tolist())) if np.count_nonzero(bins == k) >= IDLE_MIN_SAMPLES]
    if len(keys) < 2:
        return ()
    at = [float(np.median(idle[bins == k])) for k in keys]
    if at[-1] < IDLE_SPAN * max(at[0], 1e-3):
        return ()
    blocks = []  # pool adjacent violators: [value, weight, bins pooled]
    for k in keys:
        blocks.append([robust_median(values[bins == k]), float(np.count_nonzero(bins == k)), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (v1, w1, n1), (v2, w2, n2) = blocks.pop(-2), blocks.pop(-1)
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    fitted = [max(0.0, float(v)) for v, _, n in blocks for _ in range(n)]
    return tuple(zip(at, fitted))
