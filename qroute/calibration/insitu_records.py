"""The executor's trace as the in-situ fits read it: records by kind and shape, robust medians per shape, and a
route exchange's records (one per holder asked at once) with their network and wall times."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from qroute.calibration.fit import nonneg_lstsq, robust_median
from qroute.errors import QrouteError


def _grouped(records: Iterable[dict], key: Callable[[dict], tuple], value: Callable[[dict], float],
             centre: Callable[[list[float]], float] = robust_median) -> dict[tuple, float]:  # fmt: skip
    """`centre` (default: the robust median) of `value` per distinct `key` (one point per shape)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(value(r))
    return {k: centre(v) for k, v in groups.items()}


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
