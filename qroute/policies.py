"""Planning policies for agentic workloads, all deciding through the same cost model (pure: no clocks, no I/O).

always-route / always-fetch  every holder demand routed / fetched (`planner.forced_plan`): the two reflexes
predicate                    the paper's per-request choice (`planner.plan`)
reuse                        the predicate's plan, plus fetch-and-keep: what is fetched stays in the requester's
                             block cache, and a demand the predicate would route is bought (fetched and kept)
                             by a ski-rental rule once the route extra paid for its blocks reaches their price
load                         reuse, with holder queueing in the cost model: a holder busy a fraction rho of the
                             time (reported in its replies) makes each route exchange wait rho / (1 - rho) x its
                             own service (M/M/1); a hot holder's demands are then fetched and kept (spilled)

Ski rental (`SkiRental`). Renting a block set costs r_i at its i-th request: route's time beyond attending the same
blocks locally; buying costs B once: the fetch (both from `rent_and_price`), after which the blocks are attended
locally. Break-even rule: at request i buy if the rent already paid plus r_i reaches B, else pay r_i.
Bound: cost < 2 OPT, OPT = min(sum_i r_i, B). If the rule never buys, it paid sum_i r_i < B = OPT's choice. If it
buys at request k, it paid A + B with A (rent before k) < B, and sum_i r_i >= A + r_k >= B, so OPT = B. The bound is
per block set and residency: an evicted block starts a new account, and prices come from the cost model, so the
measured cost is within 2x of the best offline choice only as far as the model is right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from qroute.cost.model import CostModel
from qroute.errors import QrouteError
from qroute.planner import HolderDemand, Plan, Request, holder_plan, combine, forced_plan, holder_options, plan

POLICIES = ("always-route", "always-fetch", "predicate", "reuse", "load")
FORCED = {"always-route": "route", "always-fetch": "fetch"}
MAX_RHO = 0.95  # utilisation beyond which the M/M/1 wait is capped (a saturated holder)


def check_policies(names: Sequence[str]) -> tuple[str, ...]:
    """The names, or an error naming the first unknown one."""
    for n in names:
        if n not in POLICIES:
            raise QrouteError(f"unknown policy {n!r}: expected one of {', '.join(POLICIES)}")
    if not names:
        raise QrouteError("no policy given: expected one or more of " + ", ".join(POLICIES))
    return tuple(names)


@dataclass
class SkiRental:
    """Rent accounts per block (seconds of route extra paid since the block was last bought or forgotten)."""

    paid: dict[int, float] = field(default_factory=dict)

    def buy(self, blocks: Sequence[int], rent: float, price: float) -> bool:
        """True: buy now (the accounts close); False: rent this time (the rent is spread over the blocks)."""
        if not blocks:
            raise QrouteError("ski rental over no blocks: expected one or more")
        if sum(self.paid.get(b, 0.0) for b in blocks) + rent >= price:
            self.forget(blocks)
            return True
        share = max(rent, 0.0) / len(blocks)
        for b in blocks:
            self.paid[b] = self.paid.get(b, 0.0) + share
        return False

    def forget(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self.paid.pop(b, None)


@dataclass
class PolicyState:
    """What a stateful policy remembers between requests: rent accounts, the holders' reported utilisation."""

    ski: SkiRental = field(default_factory=SkiRental)
    load: dict[int, float] = field(default_factory=dict)  # holder -> busy fraction, from its replies


@dataclass(frozen=True)
class Decision:
    """A plan, and the holders whose fetched blocks the requester keeps in its cache."""

    plan: Plan
    keep: frozenset[int] = frozenset()


def rent_and_price(model: CostModel, request: Request, demand: HolderDemand, options) -> tuple[float, float]:
    """(rent, price) of one demand for this request: route's time beyond what the blocks cost once owned, and what
    buying them pays once (probe, bytes, a scattered selection's gather).

    Owned blocks are not free: each request that hits them copies them out of the cache (priced as a gather)
    and splices the copy by its offset, then attends them every layer and step. A rent <= 0 means routing beats
    even a cache hit, so such a demand is never bought."""
    s = request.shape(demand)
    splice = float(model.splice_s(demand.tokens, request.layers)) if request.offset else 0.0
    copy_out = float(model.gather_s(demand.tokens, 1, request.layers))
    owned = float(model.moved_steps(s).total) + splice + copy_out
    return float(options["route"][1].total) - owned, float(options["fetch"][1].total) - owned


def queue_wait_s(rho: float, service_s: float) -> float:
    """Mean wait of an exchange at a holder busy `rho` of the time, each exchange served in `service_s` (M/M/1)."""
    rho = min(max(rho, 0.0), MAX_RHO)
    return rho / (1.0 - rho) * service_s


def decide(name: str, model: CostModel, request: Request, blocks: Mapping[int, Sequence[int]] | None = None,
           state: PolicyState | None = None) -> Decision:  # fmt: skip
    """The decision of policy `name` for one request whose demands are the blocks not held or cached here
    (`blocks`: holder -> its selected block ids, the ski-rental accounts; default: one account per holder)."""
    check_policies([name])
    if name in FORCED:
        return Decision(forced_plan(model, request, FORCED[name]))
    base = plan(model, request)
    if name == "predicate":
        return Decision(base)
    state = state if state is not None else PolicyState()
    chosen, keep = [], set()
    for d, planned in zip(request.demands, base.holders):
        options = holder_options(model, request, d)
        primitive = _with_queue(request, d.holder, options, state) if name == "load" else planned.primitive
        if primitive == "route":
            rent, price = rent_and_price(model, request, d, options)
            account = list(blocks[d.holder]) if blocks else [-1 - d.holder]
            if state.ski.buy(account, rent, price):
                primitive = "fetch"
        if primitive == "fetch":
            keep.add(d.holder)
        chosen.append(holder_plan(d, options, primitive))
    holders = tuple(chosen)
    kinds = {h.primitive for h in holders}
    strategy = next(iter(kinds)) if len(kinds) == 1 else "mixed"
    return Decision(Plan(request, holders, combine(model, request, holders), strategy), frozenset(keep))


def _with_queue(request: Request, holder: int, options, state: PolicyState) -> str:
    """The cheapest primitive once route waits at a busy holder (its reported utilisation) each exchange."""
    totals = {p: float(ph.total) for p, (_, ph) in options.items()}
    rho = state.load.get(holder, 0.0)
    if rho > 0:
        exchanges = request.steps * request.layers
        totals["route"] += queue_wait_s(rho, float(options["route"][1].compute) / exchanges) * exchanges
    return min(totals, key=totals.get)
