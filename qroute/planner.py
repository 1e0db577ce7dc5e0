"""The planner: for one request, which primitive and which path per holder, as a frozen Plan.

Pure: a function of (cost model, request). The runtime executes Plans; the simulator
replays them on a virtual clock; neither re-decides.

Per holder the predicate takes the cheapest of route / fetch / local, each on the path
that is cheapest for *its* message (route messages are small, fetches large, so the two
may pick different fabrics). The request's predicted time combines holders as the runtime
executes them: routed holders share one round trip per layer (latencies overlap, bytes
serialise on the requester's port, one merge); fetched and recomputed chunks are moved or
rebuilt once and attended locally. The plan is the cheapest of the per-holder choice and
the three uniform assignments, so it is never predicted worse than any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from qroute.cost.model import PRIMITIVES, CostModel, Phases, Shape, best_path, check_idle
from qroute.cost.profile import PathSpec
from qroute.cost.terms import overlapped, serial_terms
from qroute.errors import QrouteError, non_negative_int, positive_int


@dataclass(frozen=True)
class HolderDemand:
    """`tokens` selected tokens of the request live on `holder`, reachable over `paths` (empty: profile defaults).

    `prefill_tokens`: what `local` must re-prefill to rebuild them (a sparse selection needs
    its chunk up to the last selected block); defaults to `tokens`. `idle_s`: how long the
    holder sat idle before the request (the executor's last reply from it; None: unknown), which
    prices a routed request's wake-up (`PathSpec.cold_at`, `AttentionCoeffs.first_step_at`).
    """

    holder: int
    tokens: int
    paths: tuple[str, ...] = ()
    prefill_tokens: int | None = None
    idle_s: float | None = None

    def __post_init__(self) -> None:
        non_negative_int("holder", self.holder)
        check_idle(self.idle_s)
        positive_int(f"tokens on holder {self.holder}", self.tokens)
        if self.prefill_tokens is not None and self.prefill_tokens < self.tokens:
            raise QrouteError(
                f"prefill tokens {self.prefill_tokens} on holder {self.holder}: expected >= its {self.tokens} selected tokens"
            )

    @property
    def rebuild_tokens(self) -> int:
        return self.tokens if self.prefill_tokens is None else self.prefill_tokens


@dataclass(frozen=True)
class Request:
    """One decode request: R rows per layer, over `layers` layers, for `steps` decode steps."""

    rows: int
    layers: int
    demands: tuple[HolderDemand, ...]
    steps: int = 1
    sparse: bool = False
    offset: int = 0

    def __post_init__(self) -> None:
        positive_int("rows", self.rows)
        positive_int("layers", self.layers)
        positive_int("reuse steps", self.steps)
        if not self.demands:
            raise QrouteError("request has no holder demands: expected at least one holder")
        ids = [d.holder for d in self.demands]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise QrouteError(f"holder {dup} appears twice in the request: expected one demand per holder")

    def shape(self, demand: HolderDemand) -> Shape:
        """The single-holder shape of one demand."""
        return Shape(self.rows, demand.tokens, self.layers, self.steps, 1, self.sparse, self.offset, demand.prefill_tokens,
                     demand.idle_s)  # fmt: skip


@dataclass(frozen=True)
class HolderPlan:
    """The decision for one holder: primitive, path (None for local), standalone phases, and all three totals."""

    holder: int
    tokens: int
    primitive: str
    path: str | None
    phases: Phases
    totals: Mapping[str, float]


@dataclass(frozen=True)
class Plan:
    """The frozen decision for one request, with the predicted phase times of the whole request."""

    request: Request
    holders: tuple[HolderPlan, ...]
    phases: Phases
    strategy: str  # "route", "fetch", "local" (uniform) or "mixed"

    @property
    def total_s(self) -> float:
        return float(self.phases.total)

    def primitive_of(self, holder: int) -> str:
        for h in self.holders:
            if h.holder == holder:
                return h.primitive
        raise QrouteError(f"holder {holder} is not in this plan: expected one of {[h.holder for h in self.holders]}")


# ----------------------------------------------------------------------------- per holder


def candidate_paths(model: CostModel, demand: HolderDemand) -> dict[str, PathSpec]:
    names = demand.paths or model.profile.default_paths
    return {n: model.profile.path(n) for n in names}


def holder_options(model: CostModel, request: Request, demand: HolderDemand) -> dict[str, tuple[str | None, Phases]]:
    """Standalone (path, phases) of each primitive for one holder."""
    shape, paths = request.shape(demand), candidate_paths(model, demand)
    route_name, route_path = best_path(paths, model.route_bytes(request.rows))
    fetch_name, fetch_path = best_path(paths, model.fetch_bytes(demand.tokens, request.layers), fetch=True)
    return {
        "route": (route_name, model.rescaled("route", model.route(shape, route_path))),
        "fetch": (fetch_name, model.rescaled("fetch", model.fetch(shape, fetch_path))),
        "local": (None, model.rescaled("local", model.local(shape))),
    }


def holder_plan(demand: HolderDemand, options: dict, primitive: str) -> HolderPlan:
    path, phases = options[primitive]
    totals = {p: float(ph.total) for p, (_, ph) in options.items()}
    return HolderPlan(demand.holder, demand.tokens, primitive, path, phases, totals)


# ----------------------------------------------------------------------------- whole request


Session = tuple[Request, Sequence[HolderPlan]]  # one request and the primitive each holder runs


def combine(model: CostModel, request: Request, chosen: Sequence[HolderPlan]) -> Phases:
    """Predicted phases of one request when each holder runs its chosen primitive."""
    return combine_batch(model, [(request, chosen)])


def combine_batch(model: CostModel, sessions: Sequence[Session]) -> Phases:
    """Predicted phases of requests decoded together, as the executor runs them.

    Per layer and step: the rows of every request routed to a holder travel in one message
    (one probe for all holders plus `per_holder_s` per extra holder, bytes serialised,
    holders in parallel, each holder computing one partial attention per request, its fixed
    part `group_s` for each request beyond the first: `AttentionCoeffs.batched_s`); then on
    the requester an attention over each request's moved KV and a merge per request. Once:
    the routed holders' wake-up (`cold_s`) and the exchanges' stalls (`stalls_s`), each
    request's fetches (its holders asked at once: one fetch probe plus `fetch_per_holder_s`
    per extra holder; bytes serialised), splice or gather, and re-prefills. All requests share
    `layers` and `steps`. With an online scale (`CostModel.online`), each part is rescaled by
    the primitive it belongs to: the exchanges and the holders' attention by route's, fetches
    and splices by fetch's, re-prefills by local's, a request's attention over moved KV and
    its merge by its fetch's or local's (by route's when all its holders are routed). A request's first step pays
    more for its attention over moved KV and its merge (`CostModel.moved_first_step`), once per layer.
    """
    layers, steps = _common(sessions)
    exchange = _routed_per_layer(model, sessions)
    per_layer = model.rescaled("route", exchange) + _moved_per_layer(model, sessions)
    idle = _routed_idle(sessions)
    cold = _route_cold(model, sessions, steps * layers, exchange.total) + Phases(compute=layers * model.first_step_s(exchange.compute, idle))
    once = sum((_once(model, r, hp) for r, hp in sessions), model.rescaled("route", cold))
    once = once + _moved_per_layer(model, sessions, first_step=True).scaled(layers)
    return per_layer.scaled(steps * layers) + once


def _common(sessions: Sequence[Session]) -> tuple[int, int]:
    shapes = {(r.layers, r.steps) for r, _ in sessions}
    if len(shapes) != 1:
        raise QrouteError(f"requests decoded together have (layers, steps) {sorted(shapes)}: expected one value")
    return shapes.pop()


def _routed_per_layer(model: CostModel, sessions: Sequence[Session]) -> Phases:
    c, rows, compute, paths, asked = model.coef, {}, {}, {}, {}
    for request, holders in sessions:
        for h in holders:
            if h.primitive == "route":
                rows[h.holder] = rows.get(h.holder, 0) + request.rows
                compute[h.holder] = compute.get(h.holder, 0.0) + model.attention_s(request.rows, h.tokens)
                paths.setdefault(h.holder, model.profile.path(h.path))
                asked[h.holder] = asked.get(h.holder, 0) + 1
    if not rows:
        return Phases()
    compute = {h: model.profile.compute.attention.batched_s(compute[h], asked[h]) for h in rows}  # one message each
    exchange = {h: model.route_bytes(rows[h]) for h in rows}
    extra = (len(rows) - 1) * max(p.per_holder_s for p in paths.values())
    serial, cap = serial_terms(paths.values())  # the others' compute that does not overlap
    ports = max(p.bytes_serial for p in paths.values())  # the others' bytes that move after the largest's
    longest = max(compute.values())
    return Phases(  # the others' serial compute is waited for in the exchange: probe (network), as the runtime measures
        probe=max(paths[h].alpha(exchange[h]) for h in rows) + extra + overlapped(list(compute.values()), serial, cap) - longest,
        transfer=overlapped([paths[h].route_move_s(rows[h] * c.q_row_bytes, exchange[h]) for h in rows], ports),
        compute=model.exchange_compute_s(longest, len(rows)),
        ret=overlapped([paths[h].route_move_s(rows[h] * c.o_row_bytes, exchange[h]) for h in rows], ports),
    )


def _route_cold(model: CostModel, sessions: Sequence[Session], exchanges: int, exchange_s: float) -> Phases:
    """The first routed exchange of the batch wakes its holders (in parallel): the largest wake-up, once, each holder's
    after its idle time (`PathSpec.cold_at`); and the stalls of its `exchanges` exchanges of `exchange_s` seconds
    each (`PathSpec.stalls_s`, the routed holders' paths' largest)."""
    paths = {h.holder: model.profile.path(h.path) for _, holders in sessions for h in holders if h.primitive == "route"}
    if not paths:
        return Phases()
    idle = _idle_by_holder(sessions)
    stalls = max(p.stalls_s(exchanges, len(paths), exchange_s) for p in paths.values())
    return Phases(probe=max(p.cold_at(idle.get(h)) for h, p in paths.items()) + stalls)


def _idle_by_holder(sessions: Sequence[Session]) -> dict[int, float]:
    """Each holder's idle seconds where a request's demand says (the longest, if requests differ)."""
    idle: dict[int, float] = {}
    for request, _ in sessions:
        for d in request.demands:
            if d.idle_s is not None:
                idle[d.holder] = max(idle.get(d.holder, 0.0), d.idle_s)
    return idle


def _routed_idle(sessions: Sequence[Session]) -> float | None:
    """The longest idle time among the routed holders (their first step's attention runs in parallel: the coldest
    sets it); None where none is known."""
    idle = _idle_by_holder(sessions)
    known = [idle[h.holder] for _, holders in sessions for h in holders if h.primitive == "route" and h.holder in idle]
    return max(known) if known else None


def _moved_per_layer(model: CostModel, sessions: Sequence[Session], first_step: bool = False) -> Phases:
    """Per layer and step, each request's attention over its moved KV and its merge, a batch's further requests at
    their fixed parts `group_s` where fitted (profile/13); `first_step`: what they cost more in the first step
    (`CostModel.moved_first_step`; nothing for a request without moved KV)."""
    total, waited, attended = Phases(), False, 0
    for nth, (request, holders) in enumerate(sessions):
        routed = sum(h.primitive == "route" for h in holders)
        after = routed > 0 and not waited  # only the first merge after the layer's exchange pays `after_route_s`
        waited = waited or after
        moved = sum(h.tokens for h in holders if h.primitive != "route")
        attend = model.attention_s(request.rows, moved, local=True, further=attended > 0) if moved else 0.0
        attended += moved > 0
        partials = 1 + routed + (1 if moved else 0)
        owner = "fetch" if any(h.primitive == "fetch" for h in holders) else "local" if moved else "route"
        merge = model.merge_s(request.rows, partials, routed=after, moved=moved, further=nth > 0)
        part = Phases(compute=attend, merge=merge)
        if first_step:
            part = model.moved_first_step(part) if moved else Phases()
        total = total + model.rescaled(owner, part)
    return total


def _once(model: CostModel, request: Request, holders: Sequence[HolderPlan]) -> Phases:
    """What one request pays once: fetches (probe + bytes), splice or gather, re-prefills."""
    layers, demands = request.layers, {d.holder: d for d in request.demands}
    fetched = [h for h in holders if h.primitive == "fetch"]
    paths = [model.profile.path(h.path) for h in fetched]
    tokens = sum(h.tokens for h in fetched)
    adapt = model.fetched_adapt_s(tokens, len(fetched), layers, request.sparse, request.offset) if fetched else 0.0
    rebuild = sum(model.reprefill_s(demands[h.holder].rebuild_tokens, layers) for h in holders if h.primitive == "local")
    moved = [model.fetch_bytes(h.tokens, layers) for h in fetched]
    # the holders are asked at once: one probe (they wake together), plus the extra of each further holder
    probe = max((p.fetch_fixed_s(n, request.sparse) for p, n in zip(paths, moved)), default=0.0)
    probe += (len(paths) - 1) * max(p.fetch_extra_s for p in paths) if paths else 0.0
    # the bytes: the largest holder's, and `fetch_bytes_serial` of the others' (1: one port)
    moves = [p.fetch_move_s(n) for p, n in zip(paths, moved)]
    transfer = overlapped(moves, max(p.fetch_bytes_serial for p in paths)) if moves else 0.0
    fetch = Phases(probe=probe, transfer=transfer, compute=adapt)
    return model.rescaled("fetch", fetch) + model.rescaled("local", Phases(compute=rebuild))


def plan(model: CostModel, request: Request) -> Plan:
    """The cheapest of: each holder's own best primitive, all-route, all-fetch, all-local."""
    options = {d.holder: holder_options(model, request, d) for d in request.demands}

    def assignment(pick) -> tuple[HolderPlan, ...]:
        return tuple(holder_plan(d, options[d.holder], pick(d)) for d in request.demands)

    candidates = {"mixed": assignment(lambda d: min(options[d.holder], key=lambda p: options[d.holder][p][1].total))}
    for prim in PRIMITIVES:
        candidates[prim] = assignment(lambda d, prim=prim: prim)
    scored = {name: combine(model, request, hp) for name, hp in candidates.items()}
    name = min(scored, key=lambda n: float(scored[n].total))
    holders = candidates[name]
    if name == "mixed" and len({h.primitive for h in holders}) == 1:
        name = holders[0].primitive
    return Plan(request, holders, scored[name], name)


def forced_plan(model: CostModel, request: Request, primitive: str) -> Plan:
    """Every holder runs `primitive` (on its best path): the always-route / -fetch / -local baselines."""
    if primitive not in PRIMITIVES:
        raise QrouteError(f"unknown primitive {primitive!r}: expected one of {', '.join(PRIMITIVES)}")
    holders = tuple(
        holder_plan(d, holder_options(model, request, d), primitive) for d in request.demands
    )
    return Plan(request, holders, combine(model, request, holders), primitive)


def uniform_request(
    rows: int, tokens: int, holders: int, layers: int, steps: int = 1, sparse: bool = False, offset: int = 0,
    paths: Sequence[str] = (), idle_s: float | None = None,
) -> Request:  # fmt: skip
    """H holders with the same demand (each idle `idle_s` seconds before it): the shape `qroute plan` takes on the
    command line."""
    positive_int("holders", holders)
    demands = tuple(HolderDemand(h, tokens, tuple(paths), idle_s=idle_s) for h in range(holders))
    return Request(rows, layers, demands, steps, sparse, offset)


def uniform_phases(model: CostModel, request: Request, primitive: str) -> Phases:
    """Predicted phases of the whole request if every holder runs `primitive` (on its best path)."""
    options = {d.holder: holder_options(model, request, d) for d in request.demands}
    chosen = [holder_plan(d, options[d.holder], primitive) for d in request.demands]
    return combine(model, request, chosen)


# ----------------------------------------------------------------------------- batched


@dataclass(frozen=True)
class BatchDecision:
    """Per-holder decisions for arrays of shapes: `choice` indexes PRIMITIVES."""

    choice: np.ndarray  # [n] int8
    total_s: np.ndarray  # [n] float64, cost of the chosen primitive
    route_path: np.ndarray  # [n] int8 index into `paths`
    fetch_path: np.ndarray  # [n] int8 index into `paths`
    paths: tuple[str, ...]


def decide_batch(
    model: CostModel, rows: np.ndarray, tokens: np.ndarray, layers: int, steps: int = 1,
    sparse: bool = False, offset: int = 0, paths: Sequence[str] = (),
) -> BatchDecision:  # fmt: skip
    """Vectorised per-holder predicate over arrays `rows [n]`, `tokens [n]` (same formulas as `plan`)."""
    rows, tokens = np.asarray(rows, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    shape = Shape(rows, tokens, layers, steps, 1, sparse, offset)
    names = tuple(paths) or model.profile.default_paths
    specs = [model.profile.path(n) for n in names]
    route = np.stack([model.rescaled("route", model.route(shape, p)).total for p in specs])  # [P, n]
    fetch = np.stack([model.rescaled("fetch", model.fetch(shape, p)).total for p in specs])
    local = np.broadcast_to(model.rescaled("local", model.local(shape)).total, rows.shape)
    route_path, fetch_path = route.argmin(axis=0), fetch.argmin(axis=0)
    totals = np.stack([route.min(axis=0), fetch.min(axis=0), local])  # [3, n]
    return BatchDecision(
        choice=totals.argmin(axis=0).astype(np.int8),
        total_s=totals.min(axis=0),
        route_path=route_path.astype(np.int8),
        fetch_path=fetch_path.astype(np.int8),
        paths=names,
    )
