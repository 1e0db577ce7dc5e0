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
