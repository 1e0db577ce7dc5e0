"""Pricing terms shared by the profile's paths, the cost model, the planner and the simulator: pure functions of
numbers (or numpy arrays) and paths."""

from __future__ import annotations

import numpy as np


def idle_curve(points, idle_s: float | None, unknown: float) -> float:
    """The value of measured (idle seconds, value) `points` at `idle_s`, interpolated in log idle time and held flat
    beyond the first and last point; `unknown` where `idle_s` is None or there are no points."""
    if idle_s is None or not points:
        return unknown
    at, values = zip(*points)
    return float(np.interp(np.log(max(idle_s, 1e-6)), np.log(at), values))


def poisson_median(mu):
    """The median of a Poisson count of mean `mu` (a number or numpy array): floor(mu + 1/3 - 0.02/mu), Choi's
    approximation; 0 below mu ~ ln 2."""
    mu = np.maximum(mu, 1e-12)
    return np.floor(np.maximum(mu + 1 / 3 - 0.02 / mu, 0.0))


def pick(small, cond, big):
    """`small` where `cond` else `big`, for numbers or numpy arrays."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, small, big)
    return small if cond else big


def overlapped(times, fraction: float, cap: float | None = None):
    """Seconds of per-holder `times` (a sequence) spent at once: the longest plus `fraction` of the others', each
    of those counted up to `cap` seconds where given."""
    top, *others = sorted(times, reverse=True)
    return top + fraction * sum(capped(t, cap) for t in others)


def capped(seconds, cap: float | None):
    """`seconds` (a number or numpy array) counted up to `cap` where one is set."""
    return seconds if cap is None else np.minimum(seconds, cap)


def serial_terms(paths) -> tuple[float, float | None]:
    """(`holder_serial`, `serial_cap_s`) of a parallel exchange over `paths`: the largest fraction, and the largest
    cap (none if any path has none)."""
    caps = [p.serial_cap_s for p in paths]
    return max(p.holder_serial for p in paths), None if any(c is None for c in caps) else max(caps)


def mean_stall_s(paths, holders: int, exchange_s: float) -> float:
    """The mean stall seconds of one route exchange of `exchange_s` seconds with `holders` holders at once over
    `paths` (stalls per exchange x size of the one- or several-holder class, the paths' largest): what a long run of
    exchanges pays per exchange (`PathSpec.stalls_s` prices the median request of a given length)."""
    multi = holders > 1
    return max(float(p.stalls_per_exchange(multi, exchange_s)) * (p.stall_s_multi if multi else p.stall_s) for p in paths)


def knot_alpha(knots, nbytes, beta_Bps):
    """(alpha, inside) of a path with measured route exchanges `knots` ((bytes, seconds), ascending bytes) at `nbytes`
    (a number or numpy array) whose line moves bytes at `beta_Bps` there (a number or array): the knots' piecewise-
    linear seconds less the line's bytes term, so that alpha + nbytes / beta is the interpolation and the rate stays
    the line's (what parallel holders' further bytes and the phases' split use); above the last knot its seconds
    plus the further bytes at the line's rate. `inside` is False below the first knot (the line's own alpha)."""
    xs, ys = [k[0] for k in knots], [k[1] for k in knots]
    b = np.asarray(nbytes, dtype=np.float64)
    seconds = np.interp(b, xs, ys) + np.maximum(b - xs[-1], 0.0) / beta_Bps
    return seconds - b / beta_Bps, b >= xs[0]


def monotone(values) -> list[float]:
    """The non-decreasing sequence nearest `values` in least squares (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def like(nbytes, value):
    """`value` (a numpy array) as a float where `nbytes` is a number."""
    return float(value) if np.ndim(nbytes) == 0 else value
