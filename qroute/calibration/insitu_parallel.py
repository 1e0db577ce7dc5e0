"""In-situ fits of what asking several holders at once costs beyond one: a parallel route exchange's extra per
holder and the serial shares of the other holders' compute and bytes, and a parallel fetch's extra per holder and
bytes' share."""

from __future__ import annotations

import numpy as np

from qroute.calibration.fit import nonneg_lstsq, robust_median
from qroute.calibration.insitu_records import _of, _route_bytes, _tokens, exchange_summary, route_exchanges
from qroute.cost.profile import PathSpec
from qroute.cost.terms import capped


def per_holder_excess(trace: list[dict], path: PathSpec, report: dict | None = None) -> tuple[float, float, float, float | None] | None:
    """(`per_holder_s`, `holder_serial`, `bytes_serial`, `serial_cap_s`): how much longer a warm parallel route
    exchange (several holders at once, one record per holder) takes than the path's price for its largest holder alone
    (one probe, that holder's bytes, the slowest holder's compute), fitted as a fixed extra per holder beyond the first,
    a fraction of the other holders' compute and a fraction of the other holders' bytes (non-negative least squares
    over robust medians per shape). Where the shapes do not vary the bytes apart from the holders' count (fewer than 3
    shapes or one message size), the bytes are taken to serialise (`bytes_serial` 1). `serial_cap_s`: the fraction
    applies to at most that much of each other holder's compute, where a cap among the shapes' others' computes
    (`_capped_fit`) cuts the fit's residual by `CAP_GAIN` or more (on 2 cores, unpinned, the scheduler often woke
    the second holder onto the first one's core and moved it after a slice of 1-2 ms); else none. None if the trace
    has no parallel exchange."""
    exchanges = [recs for recs in route_exchanges(trace) if len(recs) > 1]
    if not exchanges:
        return None
    excess: dict[tuple, list[tuple]] = {}  # shape -> (excess, others' computes, others' bytes, measured)
    by_shape: dict[tuple, list[list[dict]]] = {}
    for recs in exchanges:
        computes = sorted(r["holder_compute_s"] for r in recs)
        measured = max(r.get("wall_s", r["rtt_s"]) for r in recs) - computes[-1]
        sizes = [_route_bytes(r) for r in recs]
        moves = [b / path.beta(b) for b in sizes]
        largest = max(path.alpha(b) for b in sizes) + max(moves)
        # keyed by bytes and attended tokens: pooling the chunk sizes of one message size would average away the
        # variation in the others' compute that `holder_serial` is read from
        shape = (len(recs), tuple(sorted(zip(sizes, (_tokens(r) for r in recs)))))
        excess.setdefault(shape, []).append((measured - largest, computes[:-1], sum(moves) - max(moves), measured))
        by_shape.setdefault(shape, []).append(recs)
    keys = sorted(excess)

    def others(k, cap=None):  # the shape's robust median of its other holders' compute, each counted up to `cap`
        return robust_median([sum(capped(t, cap) for t in x[1]) for x in excess[k]])

    med = {k: [robust_median([x[i] for x in excess[k]]) for i in (0, 2, 3)] for k in keys}
    X = np.array([[k[0] - 1.0, others(k), med[k][1]] for k in keys])
    y = np.array([med[k][0] for k in keys])
    w = np.array([med[k][2] for k in keys])  # noise grows with the exchange
    if report is not None:  # per shape: holders, exchange bytes, samples, median excess, others' compute and bytes (s)
        report.update(shapes=[[k[0], [list(p) for p in k[1]], len(excess[k])] for k in keys], excess_s=y.tolist(),
                      others_s=X[:, 1].tolist(), others_bytes_s=X[:, 2].tolist(),
                      exchanges=[exchange_summary(by_shape[k]) for k in keys])  # fmt: skip
    if len(keys) < 3 or len({b for k in keys for b, _ in k[1]}) < 2:  # the bytes' share is not identifiable
        y = y - X[:, 2]
        if len(keys) < 2:
            return max(0.0, float(y[0] / X[0, 0])), 0.0, 1.0, None
        coef, _ = _weighted_nnls(X[:, :2], y, w)
        return float(coef[0]), float(min(coef[1], 1.0)), 1.0, None
    cap, coef, residual, uncapped = _capped_fit(X, y, w, lambda cap: [others(k, cap) for k in keys])
    if report is not None:
        report.update(serial_cap_s=cap, residual_uncapped=uncapped, residual=residual)
    return float(coef[0]), float(min(coef[1], 1.0)), float(min(coef[2], 1.0)), None if coef[1] < 1e-9 else cap


def _capped_fit(X: np.ndarray, y: np.ndarray, w: np.ndarray, capped_others) -> tuple[float | None, np.ndarray, float, float]:
    """(cap, coefficients, residual, uncapped residual) of the per-holder fit with column 1 (the others' compute)
    counted up to a cap (`capped_others(cap)`: that column), over a geometric grid with `CAP_SIDE` shapes' values at
    or below the cap, spanning `CAP_SPAN` x, and `CAP_SIDE` at or above it; no cap unless one cuts the residual by
    `CAP_GAIN`. Below that span the capped column is near-constant: it would trade `holder_serial` for `per_holder_s`
    and fit the noise of the smallest shapes (a fit of pure noise kept caps near the smallest value 1-2% of the time)."""
    fits = {None: _weighted_nnls(X, y, w)}
    seen = np.sort(X[:, 1])
    if len(seen) > 2 * CAP_SIDE and seen[0] > 0:
        low, high = max(seen[CAP_SIDE - 1], CAP_SPAN * seen[0]), seen[-CAP_SIDE]
        for cap in np.geomspace(low, high, 40) if low < high else ():
            capped = X.copy()
            capped[:, 1] = capped_others(cap)
            fits[float(cap)] = _weighted_nnls(capped, y, w)
    cap = min(fits, key=lambda c: fits[c][1])
    if cap is not None and fits[cap][1] > (1 - CAP_GAIN) * fits[None][1]:
        cap = None
    return cap, fits[cap][0], fits[cap][1], fits[None][1]


CAP_GAIN = 0.2  # a cap on the serial compute is kept only if it cuts the fit's residual by this fraction or more
CAP_SIDE = 3  # shapes' others' computes at or below a cap, and at or above it
CAP_SPAN = 3.0  # a cap at least this many times the smallest shape's others' compute


def _weighted_nnls(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative coefficients of `X` for `y`, each row weighted by 1 / `w`, and the weighted residual's norm."""
    A, b = X / w[:, None], np.maximum(y, 1e-12) / w
    coef = nonneg_lstsq(A, b, relative=False).coef
    return coef, float(np.linalg.norm(A @ coef - b))


def fetch_per_holder_excess(trace: list[dict], path: PathSpec) -> tuple[float, float] | None:
    """(`fetch_per_holder_s`, `fetch_bytes_serial`): how much longer a fetch from several holders at once takes (its
    network time: the last reply less the holders' gathers) than the path prices its largest holder alone (one fetch
    probe, that holder's bytes), fitted as a fixed extra per holder beyond the first and a fraction of the other
    holders' bytes (non-negative least squares over robust medians per shape, weighted by 1 / the fetch's time; the
    fraction at most 1). Where the shapes do not vary the bytes apart from the holders' count (fewer than 3 shapes of
    `FETCH_SHAPE_SAMPLES` fetches or more, or one size), the bytes are taken to serialise (fraction 1) and the extra is the robust median, never below 0.
    Measured on the dev VM (2 holders over loopback): the second holder's bytes mostly overlap the first's; priced as
    serialised, 2-holder fetches' network came out 21-22% high. None without a parallel fetch."""
    fetches: dict[tuple, list[dict]] = {}
    for r in _of(trace, "fetch"):
        if r["parallel"] > 1:
            fetches.setdefault((r.get("run", 0), r["request"]), []).append(r)
    samples: dict[tuple, list[tuple[float, float, float]]] = {}  # shape -> (excess, others' bytes (s), measured)
    for recs in fetches.values():
        if len(recs) == recs[0]["parallel"]:
            measured = max(r.get("wall_s", r["rtt_s"]) for r in recs) - sum(r["holder_compute_s"] for r in recs)
            moves = [float(path.fetch_move_s(r["bytes"])) for r in recs]
            largest = max(path.fetch_alpha(r["bytes"]) for r in recs) + max(moves)
            shape = (len(recs), tuple(sorted(r["bytes"] for r in recs)))
            samples.setdefault(shape, []).append((measured - largest, sum(moves) - max(moves), measured))
    if not samples:
        return None
    def fit_on(keys):
        med = np.array([[robust_median([x[i] for x in samples[k]]) for i in range(3)] for k in keys])
        return med, np.stack([np.array([k[0] - 1.0 for k in keys]), med[:, 1]], axis=1)

    repeated = [k for k in sorted(samples) if len(samples[k]) >= FETCH_SHAPE_SAMPLES]  # a median that resists a stall
    if len(repeated) < 3 or len({b for k in repeated for b in k[1]}) < 2:  # the bytes' share is not identifiable
        med, X = fit_on(sorted(samples))
        return max(0.0, robust_median((med[:, 0] - med[:, 1]) / X[:, 0])), 1.0
    med, X = fit_on(repeated)
    coef, _ = _weighted_nnls(X, med[:, 0], med[:, 2])
    return float(coef[0]), float(min(coef[1], 1.0))


FETCH_SHAPE_SAMPLES = 3  # fetches a shape needs to enter the fit of the bytes' share
