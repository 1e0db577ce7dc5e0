"""In-situ calibration of the compute coefficients: the holders' attention (its first decode step, several holders
at once), the requester's attention over moved KV and merges (and their first decode step), splices, gathers, each fetched reply's handling and
re-prefills, fitted to the executor's trace (the records, shape medians and fits of `insitu`)."""

from __future__ import annotations

import numpy as np

from qroute.calibration.fit import fit_idle_curve, rate, robust_median, tail_mean
from qroute.calibration.insitu_records import _fit, _grouped, _of, idle_of, route_exchanges
from qroute.cost.profile import (
    AttentionCoeffs, Compute, GatherCoeffs, MergeCoeffs, ReprefillCoeffs, SpliceCoeffs,
)  # fmt: skip
from qroute.geometry import Coefficients, Geometry


def _after_route(points: dict[tuple, float], m: np.ndarray, o: float, fits: dict) -> float:
    """Seconds a merge that follows a route exchange takes beyond the other merges' fit `m` (robust median over its
    shapes, never below 0); 0 without such merges."""
    if not points:
        return 0.0
    excess = {k: t - (m[0] + k[0] * k[1] * o * m[1] + k[2] * m[2]) for k, t in points.items()}
    fits["merge_after_route"] = {"shapes": [list(k) for k in sorted(points)], "seconds": [points[k] for k in sorted(points)],
                                 "excess_s": [excess[k] for k in sorted(points)]}  # fmt: skip
    return max(0.0, robust_median(list(excess.values())))


def _holder_attention(points: dict[tuple, float], kv: float, f: float, fits: dict) -> tuple[np.ndarray, float | None]:
    """([fixed_s, read, flops, per_row] coefficients, `group_s`) of the holders' attention over their messages' medians
    (key: the message's groups, (rows, tokens) per request): `fixed_s` once per message and `group_s` for each group
    beyond the first where some message carried several (a batch; profile/11), else `fixed_s` per group (None)."""
    work = lambda k: [sum(t for _, t in k) * kv, sum(r * t for r, t in k) * f, sum(r for r, _ in k)]  # noqa: E731
    if not any(len(k) > 1 for k in points):
        return _fit(points, lambda k: [len(k), *work(k)], "attention", fits), None
    a = _fit(points, lambda k: [1.0, len(k) - 1, *work(k)], "attention", fits)
    return np.concatenate([a[:1], a[2:]]), float(a[1])


def _with_group(points: dict[tuple, float], work, name: str, fits: dict) -> tuple[np.ndarray, float | None]:
    """([fixed_s, *work coefficients], `group_s`) of a requester-side computation over its shapes' medians (`points`,
    keyed by shape with a last element: whether the record was a batch's further request in its layer, `nth` > 0):
    `fixed_s` for a layer's first request and `group_s` for each further one where the trace has both (profile/13: on
    the dev VM a batch of 3 fetching 64-token chunks spent 5-13% less per request in attention over moved KV and
    10-22% less in merges than the same request alone), else `fixed_s` for every one (None)."""
    if not any(k[-1] for k in points) or all(k[-1] for k in points):
        return _fit(points, lambda k: [1.0, *work(k)], name, fits), None
    c = _fit(points, lambda k: [1.0 - k[-1], float(k[-1]), *work(k)], name, fits)
    return np.concatenate([c[:1], c[2:]]), float(c[1])


def _groups_key(r: dict) -> tuple:
    return tuple(map(tuple, r["groups"]))


def first_step_excess(trace: list[dict], fits: dict | None = None) -> tuple[float, tuple[tuple[float, float], ...]]:
    """(`AttentionCoeffs.first_step_excess`, `first_step_idle`): how much longer a holder attends in a request's
    first decode step than in its later steps, relative (exchanges with one holder; the first step's caches are
    cold): per first step the mean over its layers of each one's compute against the median warm compute of its
    groups, less 1; the robust median over first steps, never below 0 (0 without both kinds of step); and against
    how long the holder had sat idle before the step's first exchange, `fit_idle_curve`."""
    route = [r for r in _of(trace, "route") if r.get("parallel", 1) == 1]
    warm = _grouped([r for r in route if not r.get("first_step")], _groups_key, lambda r: r["holder_compute_s"])
    steps: dict[tuple, list[dict]] = {}
    for r in route:
        if r.get("first_step") and warm.get(_groups_key(r), 0) > 0:
            steps.setdefault((r.get("run", 0), r["step"], r.get("holder")), []).append(r)
    ratios = [float(np.mean([r["holder_compute_s"] / warm[_groups_key(r)] for r in recs])) - 1 for recs in steps.values()]
    idle = [idle_of(min(recs, key=lambda r: r["layer"])) for recs in steps.values()]
    curve = fit_idle_curve(idle, ratios)
    if fits is not None and ratios:
        fits["first_step"] = {"steps": len(ratios), "median_excess": float(robust_median(ratios)), "idle": [list(p) for p in curve]}
    return (max(0.0, float(robust_median(ratios))) if ratios else 0.0), curve


def parallel_excess(trace: list[dict], fits: dict | None = None) -> float:
    """`AttentionCoeffs.parallel_excess`: how much longer the slowest holder of a warm exchange asking several holders
    at once attends than the slowest of them alone, relative, per holder beyond the first; shape by shape (robust
    medians of the exchange's slowest compute and of one-holder exchanges of each holder's groups), the robust
    median over shapes, never below 0 (0 without a parallel exchange whose every holder's shape was also asked
    alone). Measured on the dev VM (3 instances, 2 cores): 10% at the median, 0.89x to 1.30x by shape."""
    warm = [r for r in _of(trace, "route") if not r.get("first_step")]
    alone = _grouped([r for r in warm if r.get("parallel", 1) == 1], _groups_key, lambda r: r["holder_compute_s"])
    slowest: dict[tuple, list[float]] = {}
    for recs in route_exchanges([r for r in warm if r.get("parallel", 1) > 1]):
        if len(recs) > 1:
            slowest.setdefault(tuple(sorted(map(_groups_key, recs))), []).append(max(r["holder_compute_s"] for r in recs))
    ratios = [(robust_median(v) / max(alone[k] for k in shape) - 1) / (len(shape) - 1)
              for shape, v in slowest.items() if all(alone.get(k, 0) > 0 for k in shape)]  # fmt: skip
    return _median_excess(ratios, fits, "parallel_compute", ("shapes", "median_excess"))


def _warm(records: list[dict]) -> list[dict]:
    """The records of later decode steps (not a request's first), or all of them where there are none."""
    return [r for r in records if not r.get("first_step")] or records


def requester_first_step(records: list[dict], key, fits: dict | None = None, name: str = "first_step") -> float:
    """How much longer, relative, a requester-side computation (`records` of one kind: its attention over moved KV, or
    the merge after it) takes in a request's first decode step than in later ones: each first-step record's seconds
    against the median of its shape's (`key`) later records, less 1; the robust median, never below 0 (0 without both
    kinds of step). Measured on the dev VM (gloo, 2 instances, 1-24 tokens a step, 4-32 blocks moved): +9% for merges
    and +4% for the attention at the median of shapes."""
    warm = _grouped([r for r in records if not r.get("first_step")], key, lambda r: r["seconds"])
    ratios = [r["seconds"] / warm[key(r)] - 1 for r in records if r.get("first_step") and warm.get(key(r), 0) > 0]
    return _median_excess(ratios, fits, name, ("records", "median_excess"))


def reply_excess(trace: list[dict], fits: dict | None = None) -> float:
    """`GatherCoeffs.reply_s`: per fetched holder, what a request that only fetched paid in compute on the requester
    beyond its splices and the holders' gathers of scattered blocks (the executor's `adapt` records: the holder's send
    of a contiguous run, the reply's handling); the robust median over those requests, never below 0 (0 if none)."""
    excess = [(r["seconds"] - r["splice_s"] - r["gather_s"]) / r["fetched"] for r in _of(trace, "adapt")]
    return _median_excess(excess, fits, "reply", ("requests", "median_s"))


def _median_excess(values: list[float], fits: dict | None, name: str, keys: tuple[str, str]) -> float:
    """The robust median of `values`, never below 0 (0 if none); `fits[name]` reports their count and the median as
    fitted under `keys`."""
    if not values:
        return 0.0
    median = float(robust_median(values))
    if fits is not None:
        fits[name] = {keys[0]: len(values), keys[1]: median}
    return max(0.0, median)


def fit_compute_from_trace(trace: list[dict], g: Geometry, coef: Coefficients, fits: dict) -> Compute:
    """Every compute coefficient from the trace (see the module doc). A shape's point is the robust median of its
    records, but for what a request does once per layer and step (the holders' attention, the attention over moved
    KV, merges) the `tail_mean`: the request's phase sums many of them. A splice, a gather or a re-prefill comes once
    per request: there the median is what a request pays, and the mean of the few records a shape has is one slow
    record away from it (the first-step and parallel excesses stay ratios of medians)."""
    grouped = lambda records, key, value: _grouped(records, key, value, tail_mean)  # noqa: E731
    kv, f, o = coef.kv_token_layer_bytes, g.attn_flops_per_row_token, coef.o_row_bytes

    route = _of(trace, "route")
    warm = _warm(route)  # the first step's excess is priced on its own
    alone = [r for r in warm if r.get("parallel", 1) == 1] or warm  # and several holders at once (`parallel_excess`)
    holder = grouped(alone, _groups_key, lambda r: r["holder_compute_s"])
    a, group = _holder_attention(holder, kv, f, fits)
    moved_key = lambda r: (r["rows"], r["tokens"])  # noqa: E731
    further = lambda key: lambda r: (*key(r), r.get("nth", 0) > 0)  # noqa: E731  a batch's further request in its layer
    moved = grouped(_warm(_of(trace, "moved")), further(moved_key), lambda r: r["seconds"])
    la, la_group = _with_group(moved, lambda k: [k[1] * kv, k[0] * k[1] * f, k[0]], "local_attention", fits)
    merges = _warm(_of(trace, "merge"))  # the first step's excess is priced on its own (`requester_first_step`)
    after = [r for r in merges if r.get("routed")]
    others = [r for r in merges if not r.get("routed")]
    merge_key = lambda r: (r["rows"], r["partials"], r.get("moved", 0))  # noqa: E731
    base = grouped(others, further(merge_key), lambda r: r["seconds"])
    m, m_group = _with_group(base if len(base) >= 3 else grouped(merges, further(merge_key), lambda r: r["seconds"]),
                             lambda k: [k[0] * k[1] * o, k[2]], "merge", fits)  # fmt: skip
    after_route = _after_route(grouped(after, merge_key, lambda r: r["seconds"]), m, o, fits) if len(base) >= 3 else 0.0
    splice = _grouped(_of(trace, "splice"), lambda r: (r["tokens"], r["layers"]), lambda r: r["seconds"])
    s = _fit(splice, lambda k: [1.0, k[0] * k[1]], "splice", fits)
    scattered = [r for r in _of(trace, "fetch") if r.get("scattered")]  # a contiguous run is sent as stored
    gather = _grouped(scattered, lambda r: (r["tokens"], r["layers"]), lambda r: r["holder_compute_s"])
    gt = _fit(gather, lambda k: [1.0, k[0] * k[1]], "gather", fits)
    local = _grouped(_of(trace, "local"), lambda r: (r["tokens"],), lambda r: r["seconds"])
    rp = _fit(local, lambda k: [1.0, g.layers * k[0] * g.dense_flops_per_token_layer,
                                g.layers * k[0] * (k[0] + 1) / 2 * g.attn_flops_per_token_pair], "reprefill", fits)  # fmt: skip
    src = "measured in situ: fitted to the runtime's trace"
    first = first_step_excess(trace, fits)
    return Compute(
        attention=AttentionCoeffs(float(a[0]), rate(a[1]), rate(a[2]), src, float(a[3]), first[0], parallel_excess(trace, fits),
                                  first[1], group),  # fmt: skip
        local_attention=AttentionCoeffs(float(la[0]), rate(la[1]), rate(la[2]), src, float(la[3]),
                                        requester_first_step(_of(trace, "moved"), moved_key, fits, "moved_first_step"),
                                        group_s=la_group),  # fmt: skip
        merge=MergeCoeffs(float(m[0]), rate(m[1]), src, after_route, float(m[2]),
                          requester_first_step([r for r in _of(trace, "merge") if not r.get("routed") and r.get("moved")],
                                               merge_key, fits, "merge_first_step"), m_group),  # fmt: skip
        splice=SpliceCoeffs(float(s[0]), 0.0, float(s[1]), src),
        gather=GatherCoeffs(float(gt[0]), 0.0, float(gt[1]), src, reply_excess(trace, fits)),
        reprefill=ReprefillCoeffs(float(rp[0]), rate(rp[1]), rate(rp[2]), src),
    )
