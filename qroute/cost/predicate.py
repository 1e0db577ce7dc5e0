"""Break-even quantities of the route / fetch / local predicate, in closed form.

Every primitive's cost is affine in rows R, in decode steps N, in a path's probe latency
alpha and in the per-holder chunk size C (local's re-prefill adds a C^2 attention term, so
local-vs-fetch in C is quadratic). Two (three) evaluations of the cost model therefore give
the exact coefficients, and the crossing is solved directly, no search. For example, rows:

    route(R) = N L (alpha + (H-1) x + A0 + M0) + cold + R N L (H (q + o) / beta + C f / F + m (H + 1))
    fetch(R) = alpha + (H-1) x + cold + H C L kv / beta + adapt + N L (A0' + R H C f / F)
    R* = (fetch(0) - route(0)) / (route'(R) - fetch'(R))

with q, o, kv the geometry's bytes, f the attention FLOPs per row and token, F the
profile's FLOP rate, m the merge cost per row and partial, A0 the attention's fixed and
read terms, x and cold the path's per-holder extra and wake-up. A path's stalls (profile/6) add a step function of the
request's exchange seconds: like a small-message regime's pieces, `_root_piecewise` solves the piece a root
lies in. Path crossover: two paths cost the same for a message of
`(alpha_2 - alpha_1) / (1/beta_1 - 1/beta_2)` bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Callable

from qroute.cost.model import CostModel, path_flips
from qroute.planner import Request, uniform_phases


@dataclass(frozen=True)
class BreakEven:
    """`quantity` at which `cheaper_below` stops being cheaper than `cheaper_above`; value None = never."""

    quantity: str
    unit: str
    value: float | None
    current: float
    cheaper_below: str
    cheaper_above: str
    path: str = ""

    def winner(self) -> str:
        """Which side is cheaper at the current value."""
        if self.value is None:
            return self.cheaper_below
        return self.cheaper_below if self.current < self.value else self.cheaper_above

    def as_dict(self) -> dict:
        return {
            "quantity": self.quantity, "path": self.path, "unit": self.unit, "value": self.value,
            "current": self.current, "cheaper_below": self.cheaper_below, "cheaper_above": self.cheaper_above,
            "winner_now": self.winner(),
        }  # fmt: skip


def _total(model: CostModel, request: Request, primitive: str) -> float:
    return float(uniform_phases(model, request, primitive).total)


def _root_affine(f: Callable[[float], float], x1: float, x2: float) -> float | None:
    """Root of an affine `f` from two evaluations, if positive."""
    d1, d2 = f(x1), f(x2)
    slope = (d2 - d1) / (x2 - x1)
    if slope == 0:
        return None
    root = x1 - d1 / slope
    return root if root > 0 else None


def _root_piecewise(f: Callable[[float], float], start: float = 1.0, iters: int = 16) -> float | None:
    """Root of a piecewise-affine `f` (a path's small-message regime makes costs piecewise in rows):
    solve the affine piece around x, move x there, repeat until the root lies in the piece it came from."""
    x = start
    root = None
    for _ in range(iters):
        root = _root_affine(f, x, x + 1.0)
        if root is None or abs(root - x) <= 1.0:
            return root
        x = max(start, float(math.floor(root)))
    return root


def _root_quadratic(f: Callable[[float], float]) -> float | None:
    """Smallest positive root of a quadratic `f`, from its values at 1, 2, 3."""
    y1, y2, y3 = f(1), f(2), f(3)
    a = (y3 - 2 * y2 + y1) / 2
    b = y2 - y1 - 3 * a
    c = y1 - a - b
    if abs(a) < 1e-30:
        return _root_affine(f, 1, 2)
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    roots = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
    positive = [r for r in roots if r > 0]
    return positive[0] if positive else None


def _order(diff_at_small: float, a: str, b: str) -> tuple[str, str]:
    """(cheaper below, cheaper above) given cost(a) - cost(b) at a small value."""
    return (a, b) if diff_at_small < 0 else (b, a)


def _crossing(quantity, unit, current, vary, a, b, model, quadratic=False) -> BreakEven:
    def diff(x: float) -> float:
        r = vary(x)
        return _total(model, r, a) - _total(model, r, b)

    root = _root_quadratic(diff) if quadratic else _root_piecewise(diff)
    below, above = _order(diff(1.0), a, b)
    return BreakEven(quantity, unit, root, float(current), below, above)


def _with_rows(request: Request, rows: float) -> Request:
    return replace(request, rows=_int(rows))


def _with_steps(request: Request, steps: float) -> Request:
    return replace(request, steps=_int(steps))


def _with_tokens(request: Request, tokens: float) -> Request:
    return replace(request, demands=tuple(replace(d, tokens=_int(tokens)) for d in request.demands))


def _int(x: float) -> int:
    """Evaluation points are small integers by construction (1, 2, 3)."""
    return int(round(x))


def breakevens(model: CostModel, request: Request) -> list[BreakEven]:
    """The break-even table of a uniform request, for each candidate path in turn."""
    out: list[BreakEven] = []
    for path in _paths(model, request):
        pinned = _on_path(request, path)
        out += [replace(b, path=path) for b in _shape_breakevens(model, pinned)]
        out.append(probe_breakeven(model, pinned, path))
    return out


def _shape_breakevens(model: CostModel, request: Request) -> list[BreakEven]:
    tokens = request.demands[0].tokens
    return [
        _crossing("rows: route vs fetch", "rows", request.rows,
                  lambda x: _with_rows(request, x), "route", "fetch", model),
        _crossing("rows: route vs local", "rows", request.rows,
                  lambda x: _with_rows(request, x), "route", "local", model),
        _crossing("reuse steps: route vs fetch", "steps", request.steps,
                  lambda x: _with_steps(request, x), "route", "fetch", model),
        _crossing("reuse steps: route vs local", "steps", request.steps,
                  lambda x: _with_steps(request, x), "route", "local", model),
        _crossing("chunk tokens: route vs fetch", "tokens", tokens,
                  lambda x: _with_tokens(request, x), "route", "fetch", model),
        _crossing("chunk tokens: local vs fetch", "tokens", tokens,
                  lambda x: _with_tokens(request, x), "local", "fetch", model, quadratic=True),
    ]  # fmt: skip


def _paths(model: CostModel, request: Request) -> tuple[str, ...]:
    return request.demands[0].paths or model.profile.default_paths


def _on_path(request: Request, path: str) -> Request:
    return replace(request, demands=tuple(replace(d, paths=(path,)) for d in request.demands))


def _shifted(path, delta: float):
    """The path with `delta` added to its probe latency (in every regime, knots included)."""
    small = path.small and replace(path.small, alpha_s=path.small.alpha_s + delta)
    return replace(path, alpha_s=path.alpha_s + delta, small=small, knots=tuple((b, t + delta) for b, t in path.knots))


def probe_breakeven(model: CostModel, request: Request, path: str) -> BreakEven:
    """Probe latency of `path` (at route's message size) at which routing over it stops beating fetch and local.

    route, fetch (over the same path) and local are each affine in a shift of the path's
    probe latency; route stops winning at the first crossing with either.
    """
    base = model.profile.path(path)
    now = float(base.alpha(model.route_bytes(request.rows)))

    def total(alpha_s: float, primitive: str) -> float:
        paths = dict(model.profile.paths, **{path: _shifted(base, alpha_s - now)})
        return _total(replace(model, profile=replace(model.profile, paths=paths)), request, primitive)

    roots = [
        _root_affine(lambda a, alt=alt: total(a, "route") - total(a, alt), 1e-6, 2e-6) for alt in ("fetch", "local")
    ]
    route_wins_at_zero = total(0.0, "route") < min(total(0.0, "fetch"), total(0.0, "local"))
    valid = [r for r in roots if r is not None]
    value = min(valid) if (valid and route_wins_at_zero) else None
    below = "route" if route_wins_at_zero else "fetch/local"
    return BreakEven("probe latency: route vs rest", "s", value, now, below, "fetch/local", path)


def path_crossovers(model: CostModel, request: Request) -> list[dict]:
    """For each pair of candidate paths: the message sizes where the cheaper one changes, and the winner on each side."""
    out = []
    for a, b in combinations(_paths(model, request), 2):
        pa, pb = model.profile.path(a), model.profile.path(b)
        flips = path_flips(pa, pb)
        edges = [0.0, *flips]
        winners = [a if pa.time(x) <= pb.time(x) else b for x in _inside(edges)]
        out.append({"a": a, "b": b, "flips": flips, "winners": winners})
    return out


def _inside(edges: list[float]) -> list[float]:
    """One message size inside each interval [edges[i], edges[i + 1]) (the last one open-ended)."""
    ends = [*edges[1:], None]
    return [(lo + hi) / 2 if hi is not None else (lo * 2 or 1.0) for lo, hi in zip(edges, ends)]
