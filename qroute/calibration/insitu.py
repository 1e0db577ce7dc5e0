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
import numpy as np

from qroute.calibration.fit import PathFit, fit_idle_curve, fit_path, nonneg_lstsq, robust_median
from qroute.calibration.insitu_parallel import fetch_per_holder_excess, per_holder_excess
from qroute.calibration.insitu_records import _grouped, _net, _of, _route_bytes, _tokens, exchange_times, idle_of, route_exchanges
from qroute.cost.profile import PathSpec, SmallRegime
from qroute.cost.terms import monotone
from qroute.errors import QrouteError


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
    `fetch_per_holder_s` and `fetch_bytes_serial`. The fetch line is drawn through contiguous fetches where scattered
    ones cost more at every size (`fetch_scatter_s`, profile/14), else through all. Warm route exchanges of every shape price the tail
    (`stall_terms`). `chunk_bytes`: the path moves a message in chunks that large (`_own_lines`: `chunk_s`, which
    route exchanges pay too); the line is drawn through route exchanges whose messages fit one chunk.
    """
    route = [r for r in _of(trace, "route") if r["parallel"] == 1]
    fetch = [r for r in _of(trace, "fetch") if r["parallel"] == 1]
    whole = [r for r in route if not chunk_bytes or max(r.get("payload_out", 0), r.get("payload_back", 0)) <= chunk_bytes]
    routed = _grouped([r for r in whole if not r.get("first_step")], lambda r: (_route_bytes(r),), _net)  # one chunk each way
    cold, cold_idle = cold_excess(route)
    base = PathSpec(0.0, 1.0, source, cold_s=cold, cold_idle=cold_idle, knots=route_knots(routed))
    contiguous = [r for r in fetch if not r.get("scattered")]
    scatter = 0.0
    if len({r["bytes"] for r in contiguous}) >= 2:  # the fetch line through contiguous fetches; the scattered ones'
        spec, fit, fetch_line = _line(routed, contiguous, sweep, chunk_bytes, base)  # excess apart, where it holds
        scatter = fetch_scatter_excess(fetch, spec)
    if not scatter:
        spec, fit, fetch_line = _line(routed, fetch, sweep, chunk_bytes, base)
    parallel: dict = {}
    per_holder, serial, ports, cap = per_holder_excess(trace, spec, parallel) or (0.0, 0.0, 1.0, None)
    spec = replace(spec, per_holder_s=per_holder, holder_serial=serial, bytes_serial=ports, serial_cap_s=cap)
    p, size, p_multi, size_multi, rate, rate_multi = stall_terms(trace)
    spec = replace(spec, stall_rate=rate, stall_rate_multi=rate_multi, stall_per_exchange=p, stall_s=size,
                   stall_per_exchange_multi=p_multi, stall_s_multi=size_multi)  # fmt: skip
    fetch_extra, fetch_ports = fetch_per_holder_excess(trace, spec) or (None, 1.0)
    spec = replace(spec, fetch_per_holder_s=fetch_extra, fetch_bytes_serial=fetch_ports, fetch_scatter_s=scatter)
    knots = (("knots", [list(k) for k in spec.knots]),) if spec.knots else ()
    return spec, replace(fit, extra=(("parallel", parallel),) + fetch_line + knots)


def _line(routed: dict, fetch: list[dict], sweep: dict[int, float] | None, chunk_bytes: int | None,
          base: PathSpec) -> tuple[PathSpec, PathFit, tuple]:
    """(`base` with the line and the fetches' terms, the line's fit, the fetch line's report entry) through the route
    exchanges `routed` and the one-holder `fetch` records (`fit_path_from_trace`)."""
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
    spec = replace(base, alpha_s=fit.alpha_s, beta_Bps=fit.beta_Bps, small=_small(fit), fetch_offset_s=offset,
                   fetch_beta_Bps=fetch_beta, chunk_bytes=chunk_bytes if chunk_s else None, chunk_s=chunk_s)  # fmt: skip
    return spec, fit, fetch_line


def fetch_scatter_excess(fetch: list[dict], spec: PathSpec) -> float:
    """`fetch_scatter_s` (profile/14): the robust median, over the sizes of one-holder fetches of a scattered selection
    (2 sizes or more), of their network seconds beyond the price of a contiguous fetch of those bytes (`spec`'s fetch
    line, drawn through contiguous fetches), where every size cost more; else 0 (of five sizes, all above by noise
    alone 1 time in 32: on the dev VM, where the kinds cost the same, a term kept on noise priced hashed two-holder
    fetches high). Measured in all seven two-H100 calibrations of 2026-11-27: 234-333 us over NCCL, 133-175 us over
    symmetric memory (sizes only one kind of fetch reached); on the dev VM's loopback and shared memory the two kinds
    cost the same within 7%."""
    scattered = _grouped([r for r in fetch if r.get("scattered")], lambda r: (r["bytes"],), _net)
    excess = [t - float(spec.fetch_time(b)) for (b,), t in scattered.items()]
    return robust_median(excess) if len(excess) >= 2 and min(excess) > 0 else 0.0


def route_knots(routed: dict) -> tuple[tuple[float, float], ...]:
    """The path's knots (profile/12): the warm one-holder route exchanges' median seconds at each size (`routed`:
    (bytes,) -> seconds), made non-decreasing (`terms.monotone`), where they span `SPAN` over 3 sizes or more; none
    otherwise. One line through them missed the sizes between (measured on the dev VM, 2026-11-27: gloo's in-situ
    route points were concave in size, and validation's 209-279 KB exchanges ran 8-17% above the line, its 3.3 MB
    ones 13-22%; `docs/cost-model.md`, "Knots")."""
    sizes = sorted(routed)
    if not _spans(sizes):
        return ()
    return tuple((float(k[0]), t) for k, t in zip(sizes, monotone([routed[k] for k in sizes])))


STALL_OVER, STALL_MIN_EXCHANGES = 1.5, 8  # a stall: over 1.5x its shape's median; shapes with 8 exchanges or more
STALL_MIN_REQUESTS = 12  # requests (by their sessions) that the clustering of stalls is read from
RATE_SHAPES, RATE_SPAN, RATE_CHI2 = 3, 2.0, 3.84  # the stalls' growth with an exchange's seconds: shapes, span, test


def stall_terms(trace: list[dict]) -> tuple[float, float, float, float, float, float]:
    """(`stall_per_exchange`, `stall_s`, `stall_per_exchange_multi`, `stall_s_multi`, `stall_rate`, `stall_rate_multi`)
    from the warm route exchanges of each shape (holders asked at once, their bytes and tokens; 8 exchanges or more):
    a stall is an exchange whose network time (the wall less the slowest holder's compute) exceeds 1.5x its shape's
    median, by the excess. Pooled over one-holder shapes and over several-holder shapes; zeros where none stalled.
    The idle ladder's requests (`ladder` records) are left out.

    Counted per exchange (profile/10): on the dev VM (gloo, one calibration's 588 one-holder exchanges) shapes of
    2.5-5 ms stalled in 7.4% of their exchanges and shapes of 1-1.5 ms in 7.2%. Where a class's share grows with its
    shapes' seconds (`_stall_growth`: a line in the exchange's wall seconds, kept where it fits the counts
    significantly better than a constant share), the share is `stall_per_exchange + stall_rate x seconds`: seven
    dev-VM calibrations' two-holder gloo exchanges stalled in 3-8% at 1.5 ms and 8-30% at 7-8 ms.

    Stalls come in clusters: in that calibration 4 of 126 requests of ~5 warm exchanges stalled 3 times, and 19% of
    them stalled at all, where independent stalls at 6.1% of exchanges give 25%. A request's median count is set by
    how many requests stall at all, so where the records say which sessions they belong to (`sessions`; 12 requests
    or more), a "stall" of the profile is a cluster: its share of exchanges `q` solves `mean((1 - q)^n) = ` the share of
    requests with none (n: each request's warm exchanges), never above the stalls' share `p`, and its seconds are the
    median excess times `p / q` (so the mean per exchange stays `p` stalls; a growing share is scaled by `q / p`).
    Elsewhere one stall each (`q = p`)."""
    shapes: dict[tuple, list[tuple[tuple, float, float]]] = {}  # shape -> (request, network, wall) of each exchange
    for recs in route_exchanges([r for r in trace if not r.get("ladder")]):  # not after a set idle time
        request = (recs[0].get("run", 0), tuple(sorted({x for r in recs for x in r.get("sessions", ())})))
        shape = tuple(sorted((_route_bytes(r), _tokens(r)) for r in recs))
        shapes.setdefault(shape, []).append((request, *exchange_times(recs)))
    out: list[float] = []
    rates: list[float] = []
    for multi in (False, True):
        stalled: dict[tuple, list[bool]] = {}  # request -> whether each of its exchanges stalled
        excess: list[float] = []
        counts: list[tuple[float, int, int]] = []  # per shape: median wall seconds, stalls, exchanges
        for key, runs in shapes.items():
            if (len(key) > 1) == multi and len(runs) >= STALL_MIN_EXCHANGES:
                med = float(np.median([t for _, t, _ in runs]))
                hits = [t > STALL_OVER * med for _, t, _ in runs]
                for (request, t, _), hit in zip(runs, hits):
                    stalled.setdefault(request, []).append(hit)
                    excess += [t - med] if hit else []
                counts.append((float(np.median([w for *_, w in runs])), sum(hits), len(runs)))
        q, size, p = _stall_class(stalled, excess)
        per, rate = _stall_growth(counts)
        scale = q / p if p > 0 else 0.0
        out += [per * scale, size]
        rates.append(rate * scale)
    return (*out, *rates)


def _stall_growth(counts: list[tuple[float, int, int]]) -> tuple[float, float]:
    """(share, rate per second) of a class's stalls against its shapes' median wall seconds (`counts`: seconds, stalls,
    exchanges per shape): a line through the counts (least squares, each shape's residual over the square root of its
    exchanges; both terms non-negative), kept where the class has `RATE_SHAPES` shapes or more spanning `RATE_SPAN` x
    in seconds and the line's Poisson deviance is below the constant share's by `RATE_CHI2` or more (a 5% test);
    else (the stalls' share, 0)."""
    if not counts:
        return 0.0, 0.0
    t, k, n = (np.array(c, dtype=np.float64) for c in zip(*counts))
    share = k.sum() / n.sum()
    if len(t) < RATE_SHAPES or t.max() < RATE_SPAN * t.min() or share == 0:
        return share, 0.0
    w = 1.0 / np.sqrt(n)
    coef = nonneg_lstsq(np.stack([n * w, n * t * w], axis=1), k * w, relative=False).coef
    if coef[1] <= 0:
        return share, 0.0
    line = np.maximum(n * (coef[0] + coef[1] * t), 1e-9)
    flat = n * share

    def deviance(mu):
        return 2 * float(np.sum(np.where(k > 0, k * np.log(np.maximum(k, 1e-12) / mu), 0.0) - (k - mu)))

    if deviance(flat) - deviance(line) < RATE_CHI2:
        return share, 0.0
    return float(coef[0]), float(coef[1])


def _stall_class(stalled: dict[tuple, list[bool]], excess: list[float]) -> list[float]:
    """[share of exchanges that start a cluster of stalls, a cluster's seconds, share of exchanges that stalled] of one
    class (see `stall_terms`)."""
    if not excess:
        return [0.0, 0.0, 0.0]
    p, size = len(excess) / sum(map(len, stalled.values())), float(np.median(excess))
    known = [np.array(v) for (_, sessions), v in stalled.items() if sessions]
    calm = sum(not v.any() for v in known)
    if len(known) < STALL_MIN_REQUESTS or calm == 0:
        return [p, size, p]
    lengths = np.array([len(v) for v in known], dtype=np.float64)
    lo, hi = 0.0, 1.0  # mean((1 - q)^n) falls with q: bisect for the share of calm requests
    for _ in range(60):
        q = (lo + hi) / 2
        lo, hi = (q, hi) if np.mean((1 - q) ** lengths) > calm / len(known) else (lo, q)
    q = min((lo + hi) / 2, p)
    return [q, size * p / q, p] if q > 0 else [p, size, p]


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
    if not _spans(sizes) or len(fetched) < 2:
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


def _spans(sizes: list[tuple]) -> bool:
    """Whether in-situ exchange sizes (sorted `(bytes,)` keys) fix a line of their own: 3 sizes or more, spanning `SPAN`."""
    return len(sizes) >= 3 and sizes[-1][0] >= SPAN * sizes[0][0]


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
    if not _spans(sizes):
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
