"""The discrete-event core: a virtual clock, one event per decode step of one requester's batch.

    while events:                 # (time, requester), earliest first
        release the requester's trains from the holders and ports of its last step
        admit sessions (open: plan, fetch, re-prefill, cache), each advancing its clock
        step the batch: all layers' round trips in closed form from the queue state
        schedule its next step at the step's end

A routed step is a *train* of L identical round trips (one per layer). Uncontended, its period is
the planner's per-layer time for the batch (`combine_batch`: one probe, bytes serialised on the
requester's port, holders in parallel, merges and the attention over moved KV). Each holder's
compute (capacity `holder_capacity`) and each holder port is a FIFO server in the fluid limit: with
the other trains on it using `U` of it and `S` seconds per round, a train needing `w` per layer keeps
its own period while `U + w / period <= capacity`, else runs at the saturated round
`min(S + w, w / (capacity - U))` (every train served once per round). Block transfers (fetches)
are FIFO reservations on the holder's and the requester's ports; a routed step whose holder port is
still busy with one starts when it ends.

Each holder's idle time: since it last answered anyone (a routed step's end, a fetch's last byte), as the runtime
prices it (`HolderDemand.idle_s`); a session's first step pays the wake-up and the first-step attention after it
(`PathSpec.cold_at`, `AttentionCoeffs.first_step_at`), and the predicate plans with it, rounded to a power of 2
seconds where the profile measured those curves (so that requests of one shape share a decision).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from qroute.cost.model import CostModel, Phases
from qroute.cost.terms import mean_stall_s, overlapped, serial_terms
from qroute.planner import HolderDemand, Request
from qroute.policies import PolicyState, decide
from qroute.sim.cache import LruCache, merge_caches
from qroute.sim.resources import Resources
from qroute.sim.stats import LogHistogram
from qroute.sim.topology import Layout, Topology
from qroute.sim.workload import SimRequest

STATELESS = ("always-route", "always-fetch", "predicate")  # decisions depend on the request's shape only


@dataclass
class Session:
    request: SimRequest
    last: float  # end of its previous step, or when its admission began
    routed: tuple  # ((holder, path index, rows, holder compute per layer), ...)
    moved_s: float  # per layer on the requester: attention over moved KV, merge
    cold_s: float  # paid by its first step
    done: int = 0
    attends: bool = False  # it attends moved KV (fetched, re-prefilled or cached)


@dataclass
class Requester:
    instance: int
    queue: deque
    caching: bool
    cache_blocks: int
    active: list = field(default_factory=list)
    trains: list = field(default_factory=list)  # (resource, work, util) registered by its running step
    shape: tuple | None = None  # the batch's per-layer quantities, until its sessions change
    state: PolicyState = field(default_factory=PolicyState)
    finish: float = 0.0

    def __post_init__(self) -> None:
        self.cache = LruCache(self.cache_blocks) if self.caching else None


class Engine:
    """One policy over one workload on one cluster (fresh state). `run()` returns the raw measurements."""

    def __init__(self, model: CostModel, topology: Topology, copies: list[tuple[int, ...]], layout: Layout,
                 requesters: Sequence[int], queues: Sequence[Sequence[SimRequest]], policy: str, concurrency: int = 4,
                 cache_blocks: int = 256, base_step_s: float = 0.0, price_task_prefill: bool = True,
                 paced: bool = False) -> None:  # fmt: skip
        self.model, self.topology, self.copies, self.layout, self.policy = model, topology, copies, layout, policy
        self.concurrency, self.base_step_s, self.paced = concurrency, base_step_s, paced
        self.price_task_prefill = price_task_prefill
        self.layers, self.heads, self.bs = model.geometry.layers, model.geometry.heads, layout.block_size
        self.path_names = topology.path_names()
        self.paths = [model.profile.path(p) for p in self.path_names]
        index = {name: i for i, name in enumerate(self.path_names)}
        self._intra, self._inter = index.get(topology.intra, 0), index.get(topology.inter, 0)
        n = topology.instances
        self.res = Resources([topology.holder_capacity] * n + [1] * (n * len(self.paths)))
        caching = policy in ("reuse", "load")
        self.requesters = [Requester(i, deque(q), caching, cache_blocks) for i, q in zip(requesters, queues)]
        self.latency = LogHistogram()
        self.tokens = self.session_steps = self.batch_steps = 0
        self.bytes = {"route": 0.0, "fetch": 0.0}
        self.choices = {"route": 0, "fetch": 0, "local": 0, "cache": 0}
        self._groups: dict = {}
        self._memo: dict = {}
        self.answered: dict[int, float] = {}  # holder -> when it last answered a requester (a step's end, a fetch's)
        self._idle_priced = any(p.cold_idle for p in self.paths) or bool(model.profile.compute.attention.first_step_idle)

    def port(self, instance: int, path: int) -> int:
        return self.topology.instances + instance * len(self.paths) + path

    # ------------------------------------------------------------------ the loop

    def run(self, progress: Callable[[int], None] | None = None) -> dict:
        heap = [(0.0, i) for i in range(len(self.requesters))]
        heapq.heapify(heap)
        events = 0
        while heap:
            t, i = heapq.heappop(heap)
            r = self.requesters[i]
            self._release(r)
            if self.paced and not r.active and r.queue and r.queue[0].arrival_s > t:
                heapq.heappush(heap, (r.queue[0].arrival_s, i))
                continue
            t = self._admit(r, t)
            if not r.active:
                r.finish = t
                continue
            heapq.heappush(heap, (self._step(r, t), i))
            events += 1
            if progress is not None and events % 2048 == 0:
                progress(self.session_steps)
        if progress is not None:
            progress(self.session_steps)
        return self._measured()

    def _admit(self, r: Requester, t: float) -> float:
        """Open sessions while a slot is free (paced: only requests that have arrived); the time after the opens."""
        while r.queue and len(r.active) < self.concurrency and (not self.paced or r.queue[0].arrival_s <= t):
            admitted = t
            session, t = self.open(r, r.queue.popleft(), t)
            session.last = admitted
            r.active.append(session)
            r.shape = None
        return t

    def _release(self, r: Requester) -> None:
        work, util = self.res.work, self.res.util
        for x, w, u in r.trains:
            work[x] -= w
            util[x] -= u
        r.trains = []

    # ------------------------------------------------------------------ a batch step

    def _step(self, r: Requester, t: float) -> float:
        """One decode step of `r`'s batch starting at `t`: its trains registered, latencies recorded; its end."""
        if r.shape is None:
            r.shape = self.batch_shape(r.active)
        own, routed, route_bytes = r.shape
        res, L = self.res, self.layers
        wait, period = 0.0, own
        for h, s, p, w in routed:
            wait = max(wait, res.free_at[p] - t)
            period = max(period, res.period(h, s, own), res.period(p, w, own))
        cold = max((s.cold_s for s in r.active if s.done == 0), default=0.0)
        end = t + wait + cold + L * period + self.base_step_s
        for h, s, p, w in routed:
            self.answered[h] = max(self.answered.get(h, 0.0), end)
            r.trains += ((h, s, s / period), (p, w, w / period))
            res.work[h] += s
            res.util[h] += s / period
            res.work[p] += w
            res.util[p] += w / period
            res.busy[h] += L * s
            res.busy[p] += L * w
        self.bytes["route"] += L * route_bytes
        self._record(r, end)
        return end

    def _record(self, r: Requester, end: float) -> None:
        for s in r.active:
            self.latency.add(end - s.last)
            s.last = end
            s.done += 1
            self.tokens += s.request.step_tokens
        self.session_steps += len(r.active)
        self.batch_steps += 1
        if any(s.done >= s.request.steps for s in r.active):
            r.active = [s for s in r.active if s.done < s.request.steps]
            r.shape = None

    def batch_shape(self, sessions: Sequence[Session]) -> tuple[float, tuple, float]:
        """(uncontended per-layer seconds, ((holder, its compute, its port, port seconds) per routed holder),
        route bytes per layer) of a batch, as `planner.combine_batch` prices one layer of it; the exchange's stalls
        at their mean (`mean_stall_s`), what the median request pays over the many steps a simulation runs."""
        m, rows, comp, path = self.model, {}, {}, {}
        waits = sum(bool(s.routed) for s in sessions)  # only the first merge after the exchange pays `after_route_s`
        moved = sum(s.moved_s for s in sessions) - max(waits - 1, 0) * m.profile.compute.merge.after_route_s
        moved -= m.further_saving_s(len(sessions), sum(s.attends for s in sessions))  # a batch's further requests
        asked: dict[int, int] = {}
        for s in sessions:
            for h, p, n, c in s.routed:
                rows[h], comp[h], path[h] = rows.get(h, 0) + n, comp.get(h, 0.0) + c, p
                asked[h] = asked.get(h, 0) + 1
        if not rows:
            return moved, (), 0.0
        comp = {h: m.profile.compute.attention.batched_s(comp[h], asked[h]) for h in comp}  # one message per holder
        probe = total = 0.0
        routed, out, back = [], [], []
        q, o = m.coef.q_row_bytes, m.coef.o_row_bytes
        for h in rows:
            spec = self.paths[path[h]]
            nbytes = m.route_bytes(rows[h])
            probe = max(probe, spec.alpha(nbytes))
            out.append(spec.route_move_s(rows[h] * q, nbytes))
            back.append(spec.route_move_s(rows[h] * o, nbytes))
            total += nbytes
            routed.append((h, comp[h], self.port(h, path[h]), out[-1] + back[-1]))
        used = [self.paths[p] for p in set(path.values())]
        probe += (len(rows) - 1) * max(p.per_holder_s for p in used)
        ports = max(p.bytes_serial for p in used)
        longest = max(comp.values())  # the slowest holder's compute as measured in parallel, the others' serial part
        compute = m.exchange_compute_s(longest, len(rows)) + overlapped(list(comp.values()), *serial_terms(used)) - longest
        exchange = probe + overlapped(out, ports) + compute + overlapped(back, ports)
        return exchange + mean_stall_s(used, len(rows), exchange) + moved, tuple(routed), total

    # ------------------------------------------------------------------ opening a session

    def open(self, r: Requester, req: SimRequest, t: float) -> tuple[Session, float]:
        """Plan `req` and pay what is paid once (task prefill, fetches, splice or gather, re-prefills, cache
        copies); the session and the requester's time after it."""
        m, L, bs = self.model, self.layers, self.bs
        groups = {h: list(b) for h, b in self.groups(r.instance, req).items()}
        hits: list[int] = []
        if r.cache is not None:
            hits = r.cache.lookup([b for blocks in groups.values() for b in blocks])
            if hits:
                cached = set(hits)
                groups = {h: kept for h, b in groups.items() if (kept := [x for x in b if x not in cached])}
        rows = req.step_tokens * self.heads
        idle = self.idle_s(groups, t)
        prims, keep = self.decide(r, req, groups, rows, idle) if groups else ({}, frozenset())
        t1 = t + (m.reprefill_s(req.offset, L) if self.price_task_prefill and req.offset else 0.0)
        fetched = [h for h in groups if prims[h] == "fetch"]
        if fetched:
            t1 = self._fetch(r, req, groups, fetched, t1)
        local = [h for h in groups if prims[h] == "local"]
        t1 += sum(m.reprefill_s(self._prefill_tokens(req, groups[h]), L) for h in local)
        t1 += m.splice_s(len(hits) * bs, L) if hits and req.offset else 0.0
        if keep:
            pinned = set(hits)
            for h in fetched:
                if h in keep:
                    r.cache.insert(groups[h], pinned)
        routed = tuple((h, self._path(r.instance, h), rows, m.attention_s(rows, len(groups[h]) * bs))
                       for h in groups if prims[h] == "route")  # fmt: skip
        moved = bs * (sum(len(groups[h]) for h in fetched + local) + len(hits))
        partials = 1 + len(routed) + (moved > 0)  # own state, one per routed holder, the moved KV's
        over = Phases(compute=m.attention_s(rows, moved, local=True) if moved else 0.0,
                      merge=m.merge_s(rows, partials, routed=bool(routed), moved=moved))  # fmt: skip
        moved_s = float(over.total)
        cold = max((self.paths[p].cold_at(idle.get(h)) for h, p, _, _ in routed), default=0.0)
        slowest = m.exchange_compute_s(max((a for *_, a in routed), default=0.0), max(len(routed), 1))
        known = [idle[h] for h, *_ in routed if idle.get(h) is not None]  # the coldest routed holder sets it
        cold += L * m.first_step_s(slowest, max(known) if known else None)  # the holders' first step, caches cold
        cold += L * float(m.moved_first_step(over).total) if moved else 0.0  # and the requester's over moved KV
        for p in prims.values():
            self.choices[p] += 1
        self.choices["cache"] += bool(hits)
        return Session(req, t, routed, moved_s, cold, attends=moved > 0), t1

    def _fetch(self, r: Requester, req: SimRequest, groups: dict, fetched: list[int], t: float) -> float:
        """All fetched holders asked at once: one probe, then each transfer FIFO on both ports; then gather/splice."""
        m, L, bs = self.model, self.layers, self.bs
        paths = [self._path(r.instance, h) for h in fetched]
        nbytes = [m.fetch_bytes(len(groups[h]) * bs, L) for h in fetched]
        specs = [self.paths[p] for p in paths]
        scattered = self._scattered(req, groups)
        cursor = t + max(float(s.fetch_fixed_s(n, scattered)) for s, n in zip(specs, nbytes))
        cursor += (len(fetched) - 1) * max(s.fetch_extra_s for s in specs)
        moves = [float(s.fetch_move_s(n)) for s, n in zip(specs, nbytes)]
        serial = max(s.fetch_bytes_serial for s in specs)  # the others' bytes beside the largest's (1: one port)
        largest = max(range(len(moves)), key=moves.__getitem__)
        for i in [largest] + [i for i in range(len(fetched)) if i != largest]:
            seconds = moves[i] if i == largest else serial * moves[i]
            cursor = self.res.reserve((self.port(fetched[i], paths[i]), self.port(r.instance, paths[i])), cursor, seconds)
            self.answered[fetched[i]] = max(self.answered.get(fetched[i], 0.0), cursor)
            self.bytes["fetch"] += nbytes[i]
        tokens = bs * sum(len(groups[h]) for h in fetched)
        return cursor + m.fetched_adapt_s(tokens, len(fetched), L, scattered, req.offset)

    # ------------------------------------------------------------------ planning

    def idle_s(self, groups: dict, t: float) -> dict[int, float | None]:
        """Each holder's idle seconds at `t`: since it last answered a requester (None: never yet)."""
        return {h: (max(t - self.answered[h], 0.0) if h in self.answered else None) for h in groups}

    def decide(self, r: Requester, req: SimRequest, groups: dict, rows: int,
               idle: dict[int, float | None] | None = None) -> tuple[dict, frozenset]:  # fmt: skip
        """Primitive per holder and the holders whose fetch is kept, through `qroute.policies.decide`; `idle`: each
        holder's idle seconds, rounded to a power of 2 for planning (where the profile prices them at all)."""
        holders = sorted(groups)
        scattered = self._scattered(req, groups)
        paths = [self.path_names[self._path(r.instance, h)] for h in holders]
        prefill = [self._prefill_tokens(req, groups[h]) for h in holders]
        idle = [_rounded(idle.get(h)) if idle and self._idle_priced else None for h in holders]
        key = None
        if self.policy in STATELESS:
            shape = tuple((len(groups[h]), p, f, i) for h, p, f, i in zip(holders, paths, prefill, idle))
            key = (rows, req.steps, scattered, req.offset, shape)
            if key in self._memo:
                return dict(zip(holders, self._memo[key])), frozenset()
        demands = tuple(HolderDemand(h, len(groups[h]) * self.bs, (p,), f, i) for h, p, f, i in zip(holders, paths, prefill, idle))
        request = Request(rows, self.layers, demands, req.steps, scattered, req.offset)
        if self.policy == "load":
            for h in holders:
                r.state.load[h] = min(max(self.res.util[h], 0.0) / self.res.cap[h], 1.0)
        decision = decide(self.policy, self.model, request, groups, r.state)
        prims = tuple(hp.primitive for hp in decision.plan.holders)
        if key is not None:
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[key] = prims
        return dict(zip(holders, prims)), decision.keep

    def groups(self, instance: int, req: SimRequest) -> dict[int, list[int]]:
        """The request's blocks by the holder this requester reads them from: a copy on its own node, else
        copy `instance mod copies` (spreading requesters over replicas)."""
        if isinstance(req.blocks, range):  # a whole chunk: its runs of blocks with the same copies, once per chunk
            runs = self._groups.get(req.chunk)
            if runs is None:
                runs = self._groups[req.chunk] = _runs(self.copies, req.blocks)
        else:
            runs = _runs(self.copies, req.blocks)
        out: dict[int, list[int]] = {}
        for copies, blocks in runs:
            out.setdefault(self._choose(instance, copies), []).extend(blocks)
        return out

    def _choose(self, instance: int, copies: tuple[int, ...]) -> int:
        g = self.topology.gpus_per_node
        for h in copies:
            if h // g == instance // g:
                return h
        return copies[instance % len(copies)]

    def _path(self, a: int, b: int) -> int:
        """Index (into `path_names`) of the path between instances `a` and `b`."""
        g = self.topology.gpus_per_node
        return self._intra if a // g == b // g else self._inter

    def _prefill_tokens(self, req: SimRequest, blocks: Sequence[int]) -> int:
        """What `local` re-prefills: the chunk up to the last selected block."""
        return (max(blocks) - self.layout.first[req.chunk] + 1) * self.bs

    @staticmethod
    def _scattered(req: SimRequest, groups: dict) -> bool:
        if req.sparse:
            return True
        return any(b != blocks[0] + i for blocks in groups.values() for i, b in enumerate(blocks))

    # ------------------------------------------------------------------ results

    def _measured(self) -> dict:
        n = self.topology.instances
        makespan = max((r.finish for r in self.requesters), default=0.0)
        holders = sorted({h for copies in self.copies for h in copies})
        util = (lambda x: self.res.busy[x] / (self.res.cap[x] * makespan)) if makespan > 0 else (lambda x: 0.0)
        caches = [r.cache for r in self.requesters if r.cache is not None]
        return {
            "makespan_s": makespan, "tokens": self.tokens, "session_steps": self.session_steps,
            "batch_steps": self.batch_steps, "latency": self.latency, "bytes": dict(self.bytes),
            "choices": dict(self.choices), "cache": merge_caches(caches),
            "holder_utilisation": {h: util(h) for h in holders},
            "port_utilisation": {(i, name): util(self.port(i, p)) for i in range(n)
                                 for p, name in enumerate(self.path_names) if self.res.busy[self.port(i, p)] > 0},
        }  # fmt: skip


def _rounded(idle_s: float | None) -> float | None:
    """`idle_s` rounded to a power of 2 seconds in log terms (None stays None; 0 and below 1 us: 2^-20 s)."""
    return None if idle_s is None else 2.0 ** round(math.log2(max(idle_s, 1e-6)))


def _runs(copies: list[tuple[int, ...]], blocks: Sequence[int]) -> list[tuple[tuple[int, ...], list[int]]]:
    """`blocks` cut into runs of consecutive selected blocks that share their copies."""
    runs: list = []
    for b in blocks:
        if runs and runs[-1][0] is copies[b]:
            runs[-1][1].append(b)
        else:
            runs.append((copies[b], [b]))
    return runs
