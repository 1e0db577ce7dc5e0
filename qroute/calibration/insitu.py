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


def fit_path_from_trace(trace: list[dict], source: str, sweep: dict[int, float] | None = None) -> tuple[PathSpec, PathFit]:
    """alpha + bytes/beta (with a small-message regime if one line misses) over single-holder route and fetch
    exchanges, plus `sweep` points (exchange bytes -> median seconds of a ping-pong sweep), which reach the small
    messages the runtime's exchanges may not (without them a slow link's alpha is not identifiable)."""
    route = [r for r in _of(trace, "route") if r["parallel"] == 1]
    fetch = [r for r in _of(trace, "fetch") if r["parallel"] == 1]
    points = _grouped(route, lambda r: (r["payload_out"] + r["payload_back"],), lambda r: r["rtt_s"] - r["holder_compute_s"])
    points.update(_grouped(fetch, lambda r: (r["bytes"],), lambda r: r["rtt_s"] - r["holder_compute_s"]))
    points.update({(b,): t for b, t in (sweep or {}).items() if (b,) not in points})
    if len(points) < 3:
        raise QrouteError(f"calibration trace has {len(points)} exchange sizes: expected 3 or more")
    sizes = sorted(points)
    fit = fit_path([s[0] for s in sizes], [points[s] for s in sizes])
    small = SmallRegime(fit.knee_bytes, fit.small_alpha_s, fit.small_beta_Bps) if fit.knee_bytes else None
    return PathSpec(fit.alpha_s, fit.beta_Bps, source, small), fit


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
    gather = _grouped(_of(trace, "fetch"), lambda r: (r["tokens"], r["layers"]), lambda r: r["holder_compute_s"])
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
