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

from qroute.calibration.fit import PathFit, fit_path, nonneg_lstsq, rate, robust_median
from qroute.cost.profile import (
    AttentionCoeffs, Compute, GatherCoeffs, MergeCoeffs, PathSpec, ReprefillCoeffs, SmallRegime, SpliceCoeffs,
)  # fmt: skip
from qroute.errors import QrouteError
from qroute.geometry import Coefficients, Geometry


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
    """An exchange's network time: its round trip less the holder's compute."""
    return r["rtt_s"] - r["holder_compute_s"]


def _route_bytes(r: dict) -> int:
    return r["payload_out"] + r["payload_back"]


def cold_excess(route: list[dict]) -> float:
    """`cold_s`: how much longer a request's first decode step spends in the network than a later step of the same
    shape (the holder woke up), summed over the step's layers; the robust median over first steps (0 if none)."""
    warm = _grouped([r for r in route if not r.get("first_step")], lambda r: (_route_bytes(r),), _net)
    steps: dict[tuple, float] = {}
    for r in route:
        if r.get("first_step") and (_route_bytes(r),) in warm:
            key = (r.get("run", 0), r["step"])  # step numbers restart per executor: pooled runs carry `run`
            steps[key] = steps.get(key, 0.0) + _net(r) - warm[(_route_bytes(r),)]
    return max(0.0, robust_median(list(steps.values()))) if steps else 0.0


def per_holder_excess(trace: list[dict], path: PathSpec, report: dict | None = None) -> tuple[float, float] | None:
    """(`per_holder_s`, `holder_serial`): how much longer a warm parallel route exchange (several holders at once,
    one record per holder) takes than the path's prediction (one probe, bytes serialised, the slowest holder's
    compute), fitted as a fixed extra per holder beyond the first plus a fraction of the other holders' compute
    (non-negative least squares over robust medians per shape); None if the trace has no parallel exchange."""
    exchanges: dict[tuple, list[dict]] = {}
    for r in _of(trace, "route"):
        if r["parallel"] > 1 and not r.get("first_step"):
            exchanges.setdefault((r.get("run", 0), r["step"], r["layer"]), []).append(r)
    if not exchanges:
        return None
    excess: dict[tuple, list[tuple[float, float, float]]] = {}  # shape -> (excess, others' compute, measured)
    for recs in exchanges.values():
        computes = [r["holder_compute_s"] for r in recs]
        measured = max(r["rtt_s"] for r in recs) - max(computes)
        sizes = [_route_bytes(r) for r in recs]
        predicted = max(path.alpha(b) for b in sizes) + sum(b / path.beta(b) for b in sizes)
        shape = (len(recs), tuple(sorted(sizes)))
        excess.setdefault(shape, []).append((measured - predicted, sum(computes) - max(computes), measured))
    keys = sorted(excess)
    X = np.array([[k[0] - 1.0, robust_median([x[1] for x in excess[k]])] for k in keys])
    y = np.array([robust_median([x[0] for x in excess[k]]) for k in keys])
    w = np.array([robust_median([x[2] for x in excess[k]]) for k in keys])  # noise grows with the exchange
    if report is not None:  # per shape: holders, exchange bytes, samples, median excess and others' compute (s)
        report.update(shapes=[[k[0], list(k[1]), len(excess[k])] for k in keys], excess_s=y.tolist(), others_s=X[:, 1].tolist())
    if len(keys) < 2:
        return max(0.0, float(y[0] / X[0, 0])), 0.0
    coef = nonneg_lstsq(X / w[:, None], np.maximum(y, 1e-12) / w, relative=False).coef
    return float(coef[0]), float(min(coef[1], 1.0))


def fit_path_from_trace(trace: list[dict], source: str, sweep: dict[int, float] | None = None) -> tuple[PathSpec, PathFit]:
    """alpha + bytes/beta (with a small-message regime if one line misses) over single-holder route and fetch
    exchanges, plus `sweep` points (exchange bytes -> median seconds of a ping-pong sweep) below and above the sizes
    the runtime's exchanges reached (without them a slow link's alpha is not identifiable); within that range the
    runtime's own exchanges rule (measured here: a ping-pong in a loop and the same bytes inside a decode step
    differ by 20-30%).

    Route exchanges of a request's first decode step pay the holders' wake-up: they are left out of the line and
    price `cold_s` against later steps of the same shape. Fetches (one request message, a holder woken from idle)
    share the line's rate and price their own fixed cost, `fetch_offset_s` (`fetch_offset`). Parallel exchanges
    (several holders at once) price `per_holder_s` and `holder_serial`.
    """
    route = [r for r in _of(trace, "route") if r["parallel"] == 1]
    fetch = [r for r in _of(trace, "fetch") if r["parallel"] == 1]
    routed = _grouped([r for r in route if not r.get("first_step")], lambda r: (_route_bytes(r),), _net)
    fetched = _grouped(fetch, lambda r: (r["bytes"],), _net)
    lo, hi = min({**routed, **fetched}, default=(float("inf"),))[0], max({**routed, **fetched}, default=(0,))[0]
    swept = {(b,): t for b, t in (sweep or {}).items() if not lo <= b <= hi}  # the sweep extends, never overrules
    if len({**routed, **fetched, **swept}) < 3:
        raise QrouteError(f"calibration trace has {len({**routed, **fetched, **swept})} exchange sizes: expected 3 or more")
    offset = fetch_offset(routed, fetched)
    fit = _fit_points(routed, {k: t - offset for k, t in fetched.items()}, swept)
    if routed and fetched and fit.knee_bytes:  # the offset came from one line; recentre the fetches on the final fit
        offset += _median_gap(fetched, offset, _line(fit))
        fit = _fit_points(routed, {k: t - offset for k, t in fetched.items()}, swept)
    spec = PathSpec(fit.alpha_s, fit.beta_Bps, source, _small(fit), cold_excess(route), fetch_offset_s=offset)
    parallel: dict = {}
    per_holder, serial = per_holder_excess(trace, spec, parallel) or (0.0, 0.0)
    return replace(spec, per_holder_s=per_holder, holder_serial=serial), replace(fit, extra=(("parallel", parallel),))


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


def _line(fit: PathFit) -> PathSpec:
    return PathSpec(fit.alpha_s, fit.beta_Bps, small=_small(fit))


def _median_gap(fetched: dict, offset: float, line: PathSpec) -> float:
    """Median seconds by which the fetches (less `offset`) sit above `line`."""
    return float(np.median([t - offset - line.time(b) for (b,), t in fetched.items()]))


def _small(fit: PathFit) -> SmallRegime | None:
    return SmallRegime(fit.knee_bytes, fit.small_alpha_s, fit.small_beta_Bps) if fit.knee_bytes else None


def _fit_points(routed: dict, fetched: dict, swept: dict) -> PathFit:
    points = {**swept, **fetched, **routed}
    origin = {**{k: "sweep" for k in swept}, **{k: "fetch" for k in fetched}, **{k: "route" for k in routed}}
    sizes = sorted(points)
    return replace(fit_path([s[0] for s in sizes], [points[s] for s in sizes]), origins=tuple(origin[s] for s in sizes))


def fit_compute_from_trace(trace: list[dict], g: Geometry, coef: Coefficients, fits: dict) -> Compute:
    """Every compute coefficient from the trace (see the module doc)."""
    kv, f, o = coef.kv_token_layer_bytes, g.attn_flops_per_row_token, coef.o_row_bytes

    holder = _grouped(_of(trace, "route"), lambda r: tuple(map(tuple, r["groups"])), lambda r: r["holder_compute_s"])
    a = _fit(holder, lambda k: [len(k), sum(t for _, t in k) * kv, sum(r * t for r, t in k) * f], "attention", fits)
    moved = _grouped(_of(trace, "moved"), lambda r: (r["rows"], r["tokens"]), lambda r: r["seconds"])
    la = _fit(moved, lambda k: [1.0, k[1] * kv, k[0] * k[1] * f], "local_attention", fits)
    merge = _grouped(_of(trace, "merge"), lambda r: (r["rows"], r["partials"]), lambda r: r["seconds"])
    m = _fit(merge, lambda k: [1.0, k[0] * k[1] * o], "merge", fits)
    splice = _grouped(_of(trace, "splice"), lambda r: (r["tokens"], r["layers"]), lambda r: r["seconds"])
    s = _fit(splice, lambda k: [1.0, k[0] * k[1]], "splice", fits)
    scattered = [r for r in _of(trace, "fetch") if r.get("scattered")]  # a contiguous run is sent as stored
    gather = _grouped(scattered, lambda r: (r["tokens"], r["layers"]), lambda r: r["holder_compute_s"])
    gt = _fit(gather, lambda k: [1.0, k[0] * k[1]], "gather", fits)
    local = _grouped(_of(trace, "local"), lambda r: (r["tokens"],), lambda r: r["seconds"])
    rp = _fit(local, lambda k: [1.0, g.layers * k[0] * g.dense_flops_per_token_layer,
                                g.layers * k[0] * (k[0] + 1) / 2 * g.attn_flops_per_token_pair], "reprefill", fits)  # fmt: skip
    src = "measured in situ: fitted to the runtime's trace"
    return Compute(
        attention=AttentionCoeffs(float(a[0]), rate(a[1]), rate(a[2]), src),
        local_attention=AttentionCoeffs(float(la[0]), rate(la[1]), rate(la[2]), src),
        merge=MergeCoeffs(float(m[0]), rate(m[1]), src),
        splice=SpliceCoeffs(float(s[0]), 0.0, float(s[1]), src),
        gather=GatherCoeffs(float(gt[0]), 0.0, float(gt[1]), src),
        reprefill=ReprefillCoeffs(float(rp[0]), rate(rp[1]), rate(rp[2]), src),
    )
