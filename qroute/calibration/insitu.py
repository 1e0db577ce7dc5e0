"""In-situ calibration: fit the profile's constants to the runtime's own trace.

The executor records every operation it runs (route exchanges with the holder's compute,
fetches with the holder's gather, splices, re-prefills, the requester's attention over
moved KV and its merges) with its shape and duration. Serving a training grid of requests
and regressing those records prices exactly what qroute runs, in the state it runs it
(cache pollution by the model, wake-ups between layers), which microbenchmarks in a loop
do not: measured here, a ping-pong in a loop ran twice as fast as the same exchange inside
a decode step.

Each fit first takes the robust median of the records of one shape, then non-negative
least squares over shapes (relative error), so no shape dominates and stalls do not count.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

import numpy as np

from qroute.calibration.fit import PathFit, fit_idle_curve, fit_path, nonneg_lstsq, robust_median
from qroute.cost.profile import (
    STALL_FIELDS, PathSpec, SmallRegime, capped,
)  # fmt: skip
from qroute.errors import QrouteError


def _grouped(records: Iterable[dict], key: Callable[[dict], tuple], value: Callable[[dict], float]) -> dict[tuple, float]:
    """Robust median of `value` per distinct `key` (one point per shape)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(value(r))
    return {k: robust_median(v) for k, v in groups.items()}


def _fit(points: dict[tuple, float], features: Callable[[tuple], list[float]], name: str, fits: dict) -> np.ndarray:
    unknowns = len(features(next(iter(points)))) if points else 1
    if len(points) < unknowns:
        raise QrouteError(f"calibration trace has {len(points)} shapes of {name}: expected {unknowns} or more")
    keys = sorted(points)
    fit = nonneg_lstsq(np.array([features(k) for k in keys]), np.array([points[k] for k in keys]))
    fits[name] = {"shapes": [list(k) for k in keys], "seconds": [points[k] for k in keys],
                  "median_ape": fit.median_ape, "max_ape": fit.max_ape}  # fmt: skip
    return fit.coef


def _of(trace: list[dict], kind: str) -> list[dict]:
    return [r for r in trace if r.get("kind") == kind]


def _net(r: dict) -> float:
    """An exchange's network time: its round trip (a route exchange: until its sends completed, as the decode step
    pays it; 3% more than the reply's arrival on the dev VM) less the holder's compute."""
    return r.get("wall_s", r["rtt_s"]) - r["holder_compute_s"]


def _route_bytes(r: dict) -> int:
    return r["payload_out"] + r["payload_back"]


def cold_excess(route: list[dict]) -> tuple[float, tuple[tuple[float, float], ...]]:
    """(`cold_s`, `cold_idle`): how much longer a request's first decode step spends in the network than a later
    step of the same shape (the holder woke up), summed over the step's layers: the robust median over first steps,
    never below 0; and against how long the holder had sat idle before the step's first exchange (`idle_of` its
    first layer's record), `fit_idle_curve` (empty for a trace without idle times)."""
    warm = _grouped([r for r in route if not r.get("first_step")], lambda r: (_route_bytes(r),), _net)
    steps: dict[tuple, float] = {}
    idle: dict[tuple, tuple[int, float]] = {}  # the step's first layer's idle time
    for r in route:
        if r.get("first_step") and (_route_bytes(r),) in warm:
            key = (r.get("run", 0), r["step"])  # step numbers restart per executor: pooled runs carry `run`
            steps[key] = steps.get(key, 0.0) + _net(r) - warm[(_route_bytes(r),)]
            if key not in idle or r["layer"] < idle[key][0]:
                idle[key] = (r["layer"], idle_of(r))
    if not steps:
        return 0.0, ()
    keys = list(steps)
    flat = max(0.0, robust_median([steps[k] for k in keys]))
    return flat, fit_idle_curve([idle[k][1] for k in keys], [steps[k] for k in keys])


def idle_of(r: dict) -> float:
    """How long a route record's holder had sat idle, as the planner saw it: when the request was planned
    (`planned_idle_s`; the planner prices the wake-up from that), else when the exchange was posted (`idle_s`);
    0 where the trace does not say."""
    planned = r.get("planned_idle_s")
    return planned if planned is not None else (r.get("idle_s") or 0.0)


def _tokens(r: dict) -> int:
    """Tokens a route record's rows attended at the holder (its groups' keys; 0 where a trace does not say)."""
    return sum(int(g[1]) for g in r.get("groups", ()))


def route_exchanges(trace: list[dict]) -> list[list[dict]]:
    """The warm route exchanges of a trace (a request's first decode step left out), each as its records: one per
    holder asked at once, grouped by (run, step, layer)."""
    exchanges: dict[tuple, list[dict]] = {}
    for r in _of(trace, "route"):
        if not r.get("first_step"):
            exchanges.setdefault((r.get("run", 0), r["step"], r["layer"]), []).append(r)
    return list(exchanges.values())


def exchange_times(recs: list[dict]) -> tuple[float, float]:
    """(network, wall) seconds of one exchange's records: the wall as the step paid it, less the slowest holder's
    compute."""
    wall = max(r.get("wall_s", r["rtt_s"]) for r in recs)
    return wall - max(r["holder_compute_s"] for r in recs), wall


def exchange_summary(exchanges: list[list[dict]]) -> dict | None:
    """Medians over route exchanges (seconds, bytes): the exchange as the step paid it (`wall_s`), the slowest
    holder's compute, the other holders' compute, the largest holder's bytes; what `per_holder_excess` reads, for a
    validation row to be set beside calibration's. None without exchanges."""
    if not exchanges:
        return None
    cols = []
    for recs in exchanges:
        computes = [r["holder_compute_s"] for r in recs]
        wall = max(r.get("wall_s", r["rtt_s"]) for r in recs)
        cols.append((wall, max(computes), sum(computes) - max(computes), max(_route_bytes(r) for r in recs)))
    names = ("wall_s", "compute_s", "others_compute_s", "bytes")
    out = {"holders": len(exchanges[0]), "n": len(cols), **{n: float(np.median([c[i] for c in cols])) for i, n in enumerate(names)}}
    timed = [recs for recs in exchanges if all(r.get("holder_start") is not None and "t_post" in r for r in recs)]
    if timed:  # when each holder began and ended its compute after the exchange was posted, earliest first (one host)
        starts = np.array([sorted(r["holder_start"] - r["t_post"] for r in recs) for recs in timed])
        ends = np.array([sorted(r["holder_start"] + r["holder_compute_s"] - r["t_post"] for r in recs) for recs in timed])
        out.update(start_s=np.median(starts, axis=0).tolist(), end_s=np.median(ends, axis=0).tolist())
    return out


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


def fit_path_from_trace(trace: list[dict], source: str, sweep: dict[int, float] | None = None,
                        chunk_bytes: int | None = None) -> tuple[PathSpec, PathFit]:  # fmt: skip
    """alpha + bytes/beta (with a small-message regime if one line misses) over single-holder route and fetch
    exchanges, plus `sweep` points (exchange bytes -> median seconds of a ping-pong sweep) below and above the sizes
    the runtime's exchanges reached (without them a slow link's alpha is not identifiable); within that range the
    runtime's own exchanges rule (measured here: a ping-pong in a loop and the same bytes inside a decode step
    differ by 20-30%).

    Route exchanges of a request's first decode step pay the holders' wake-up: they are left out of the line and
    price `cold_s` against later steps of the same shape. Fetches (one request message, a holder woken from idle)
    share the line's rate and price their own fixed cost, `fetch_offset_s` (`fetch_offset`). Parallel exchanges
    (several holders at once) price `per_holder_s`, `holder_serial` and `bytes_serial`; parallel fetches
    `fetch_per_holder_s` and `fetch_bytes_serial`. Warm route exchanges of every shape price the tail
    (`stall_terms`). `chunk_bytes`: the path moves a message in chunks that large (`_own_lines`: `chunk_s`).
    """
    route = [r for r in _of(trace, "route") if r["parallel"] == 1]
    fetch = [r for r in _of(trace, "fetch") if r["parallel"] == 1]
    routed = _grouped([r for r in route if not r.get("first_step")], lambda r: (_route_bytes(r),), _net)
    fetched = _grouped(fetch, lambda r: (r["bytes"],), _net)
    lo, hi = min({**routed, **fetched}, default=(float("inf"),))[0], max({**routed, **fetched}, default=(0,))[0]
    swept = {(b,): t for b, t in (sweep or {}).items() if not lo <= b <= hi}  # the sweep extends, never overrules
    if len({**routed, **fetched, **swept}) < 3:
        raise QrouteError(f"calibration trace has {len({**routed, **fetched, **swept})} exchange sizes: expected 3 or more")
    own = _own_lines(routed, fetched, sweep or {}, chunk_bytes)
    fetch_line: tuple = ()
    chunk_s = 0.0
    if own is not None:  # each kind of exchange on its own line
        fit, spec, report = own
        offset, fetch_beta, chunk_s = spec.fetch_offset_s, spec.fetch_beta_Bps, spec.chunk_s
        fetch_line = (("fetch", report),)
    else:
        offset, fetch_beta = fetch_offset(routed, fetched), None
        fit = _fit_points(routed, {k: t - offset for k, t in fetched.items()}, swept)
        if routed and fetched and fit.knee_bytes:  # the offset came from one line; recentre the fetches on the final fit
            offset += _median_gap(fetched, offset, path_line(fit))
            fit = _fit_points(routed, {k: t - offset for k, t in fetched.items()}, swept)
    cold, cold_idle = cold_excess(route)
    spec = PathSpec(fit.alpha_s, fit.beta_Bps, source, _small(fit), cold, fetch_offset_s=offset, fetch_beta_Bps=fetch_beta,
                    cold_idle=cold_idle, chunk_bytes=chunk_bytes if chunk_s else None, chunk_s=chunk_s)  # fmt: skip
    parallel: dict = {}
    per_holder, serial, ports, cap = per_holder_excess(trace, spec, parallel) or (0.0, 0.0, 1.0, None)
    spec = replace(spec, per_holder_s=per_holder, holder_serial=serial, bytes_serial=ports, serial_cap_s=cap)
    spec = replace(spec, **dict(zip(STALL_FIELDS, stall_terms(trace))))
    fetch_extra, fetch_ports = fetch_per_holder_excess(trace, spec) or (None, 1.0)
    spec = replace(spec, fetch_per_holder_s=fetch_extra, fetch_bytes_serial=fetch_ports)
    return spec, replace(fit, extra=(("parallel", parallel),) + fetch_line)


STALL_OVER, STALL_MIN_EXCHANGES = 1.5, 8  # a stall: over 1.5x its shape's median; shapes with 8 exchanges or more


def stall_terms(trace: list[dict]) -> tuple[float, float, float, float]:
    """(`stall_rate`, `stall_s`, `stall_rate_multi`, `stall_s_multi`) from the warm route exchanges of each shape
    (holders asked at once, their bytes and tokens; 8 exchanges or more): a stall is an exchange whose network time
    (the wall less the slowest holder's compute) exceeds 1.5x its shape's median. The rate: stalls per second of
    the exchanges' wall time (each counted at its shape's median); the size: the stalls' median excess over their
    shape's median. Pooled over one-holder shapes and over several-holder shapes; (0, 0) where none stalled."""
    shapes: dict[tuple, list[tuple[float, float]]] = {}
    for recs in route_exchanges(trace):
        shapes.setdefault(tuple(sorted((_route_bytes(r), _tokens(r)) for r in recs)), []).append(exchange_times(recs))
    out: list[float] = []
    for multi in (False, True):
        seconds, excess = 0.0, []
        for key, runs in shapes.items():
            if (len(key) > 1) == multi and len(runs) >= STALL_MIN_EXCHANGES:
                net, wall = np.array(runs).T
                med = float(np.median(net))
                seconds += len(runs) * float(np.median(wall))
                excess += [float(t - med) for t in net if t > STALL_OVER * med]
        out += [len(excess) / seconds, float(np.median(excess))] if excess else [0.0, 0.0]
    return tuple(out)


def _own_lines(routed: dict, fetched: dict, sweep: dict[int, float], chunk: float | None = None) -> tuple[PathFit, PathSpec, dict] | None:
    """(route line, that line with the fetches' own terms, the fetch line's report: its points and residuals) where
    the route exchanges span `SPAN` over 3 sizes or more and the fetches 2 sizes or more: the path's line through
    the route exchanges alone (the sweep's points outside their sizes extend it, `_fit_points`), and the fetches'
    own offset from that line's probe and their own rate (least squares on relative error; the rate positive); on a
    path that moves a message in `chunk` bytes at a time, also `chunk_s` per chunk beyond the first where the
    fetches span 3 sizes and 2 chunk counts or more and it fits positive (the dev VM's shared memory: 1 MiB slots,
    each read before the next is written, so its fetch times step up at each MiB). None otherwise (one line
    through both, `fetch_offset`).

    A route exchange (one small message per layer, the holder answering at once) and a fetch (one large message)
    move bytes at different rates: on the dev VM, through one line with an offset, the fetches pulled the line's
    probe down and priced held-out route exchanges 6-36% low (each training repeat against the others); on lines of
    their own, within 4-10% (route) and 5-14% (fetch), fetch rates 1.25-1.27 GB/s on gloo against route's 2.1-2.8."""
    sizes = sorted(routed)
    if len(sizes) < 3 or sizes[-1][0] < SPAN * sizes[0][0] or len(fetched) < 2:
        return None
    swept = {(b,): t for b, t in sweep.items() if not sizes[0][0] <= b <= sizes[-1][0]}
    fit = _fit_points(routed, {}, swept)
    line = path_line(fit)
    b = np.array([k[0] for k in fetched], dtype=np.float64)
    t = np.array([fetched[k] for k in fetched])
    X, y, w = np.stack([np.ones_like(b), b], axis=1), t - np.array([line.alpha(x) for x in b]), 1.0 / t
    chunks = np.maximum(np.ceil(b / chunk) - 1, 0) if chunk else np.zeros_like(b)
    coef = None
    if len(b) >= 3 and len(set(chunks.tolist())) >= 2:  # the chunks' hand-offs: a third column
        X3 = np.concatenate([X, chunks[:, None]], axis=1)
        coef, *_ = np.linalg.lstsq(X3 * w[:, None], y * w, rcond=None)
        coef = coef if coef[1] > 0 and coef[2] > 0 else None
    if coef is None:
        (offset, inverse), *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
        coef = np.array([offset, inverse, 0.0])
    if coef[1] <= 0:  # the fetches' sizes fix no rate
        return None
    own = replace(line, fetch_offset_s=float(coef[0]), fetch_beta_Bps=float(1.0 / coef[1]), chunk_bytes=chunk,
                  chunk_s=float(coef[2]))  # fmt: skip
    report = {"offset_s": own.fetch_offset_s, "beta_Bps": own.fetch_beta_Bps, "chunk_bytes": chunk, "chunk_s": own.chunk_s,
              "points": [[float(x), float(y)] for x, y in zip(b, t)],
              "rel_residuals": [float(own.fetch_time(x) / y - 1) for x, y in zip(b, t)]}  # fmt: skip
    return fit, own, report


def fetch_offset(routed: dict, fetched: dict) -> float:
    """Seconds a fetch costs beyond a route exchange of the same bytes: one line `alpha + b/beta + offset * fetch`
    through both (least squares on relative error; the offset may be negative); 0 without both kinds."""
    if not routed or not fetched or len(routed) + len(fetched) < 4:
        return 0.0
    pts = [(b, t, 0.0) for (b,), t in routed.items()] + [(b, t, 1.0) for (b,), t in fetched.items()]
    X = np.array([[1.0, b, f] for b, _, f in pts])
    y = np.array([t for _, t, _ in pts])
    coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones_like(y), rcond=None)
    return float(coef[2])


def path_line(fit: PathFit) -> PathSpec:
    """The PathSpec of a path fit (its line and small regime), without the in-situ extras."""
    return PathSpec(fit.alpha_s, fit.beta_Bps, small=_small(fit))


def _median_gap(fetched: dict, offset: float, line: PathSpec) -> float:
    """Median seconds by which the fetches (less `offset`) sit above `line`."""
    return float(np.median([t - offset - line.time(b) for (b,), t in fetched.items()]))


def _small(fit: PathFit) -> SmallRegime | None:
    return SmallRegime(fit.knee_bytes, fit.small_alpha_s, fit.small_beta_Bps) if fit.knee_bytes else None


SPAN = 4.0  # in-situ exchanges over sizes this far apart (largest / smallest) can fix the line on their own


def _fit_points(routed: dict, fetched: dict, swept: dict) -> PathFit:
    """Of two fits, the one that prices the runtime's own exchanges best (median relative error over them): a line
    through those exchanges alone (where they span `SPAN`), with the ping-pong sweep's points below them as the
    small-message regime; or one fit through every point, sweep included (small regimes where one line misses).

    A ping-pong in a loop runs faster than the same bytes inside a decode step (on the H100 host 0.72 ms against
    0.97 ms at 70 KB): pooled into one line, the sweep's many small sizes pulled the in-situ range 10-15% low there.
    A link whose cost is not one line over the exchanged sizes (a delay line with a regime near 1 MB) may be better
    served by the pooled fit."""
    insitu = {**fetched, **routed}
    origin = {**{k: "sweep" for k in swept}, **{k: "fetch" for k in fetched}, **{k: "route" for k in routed}}
    pooled = _fit_pooled({**swept, **insitu}, origin)
    sizes = sorted(insitu)
    if len(sizes) < 3 or sizes[-1][0] < SPAN * sizes[0][0]:
        return pooled
    own = _fit_pooled(insitu, origin)
    below = {k: t for k, t in swept.items() if k < sizes[0]}
    if not own.knee_bytes and len(below) >= 2:  # a regime of the runtime's own exchanges outranks the sweep's
        small = _fit_pooled(below, origin, regimes=False)
        own = replace(own, small_alpha_s=small.alpha_s, small_beta_Bps=small.beta_Bps,
                      knee_bytes=float(np.sqrt(max(below)[0] * sizes[0][0])),
                      rel_residuals=np.concatenate([small.rel_residuals, own.rel_residuals]),
                      points=small.points + own.points, origins=small.origins + own.origins)  # fmt: skip
    return min((own, pooled), key=lambda fit: _insitu_ape(fit, insitu))  # ties: the runtime's own line


def _insitu_ape(fit: PathFit, insitu: dict) -> float:
    """Median relative error of `fit` over the in-situ points."""
    line = path_line(fit)
    return float(np.median([abs(line.time(k[0]) - t) / t for k, t in insitu.items()]))


def _fit_pooled(points: dict, origin: dict, regimes: bool = True) -> PathFit:
    """fit_path over `points` (size tuple -> seconds); one line only unless `regimes`."""
    sizes = sorted(points)
    fit = fit_path([s[0] for s in sizes], [points[s] for s in sizes], floor=0.03 if regimes else float("inf"))
    return replace(fit, origins=tuple(origin[s] for s in sizes))
