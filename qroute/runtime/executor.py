"""The requester: execute each request's Plan for real, layer by layer, and time every phase.

A session is one sub-agent request in flight. Opening it prefills the agent's own context,
plans (or forces) a primitive per holder, and does what is paid once: fetch (holder
gathers, requester splices by `+offset`) or local (re-prefill the chunk at its reuse
positions). Each decode step then runs the model over a batch of sessions, each with
`step_tokens` new tokens (the greedy next token, then draft tokens: rows = tokens x heads),
through a `BatchContext` (batch.py) that routes, attends moved KV and merges per layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from qroute.cost.model import CostModel, predicted_groups
from qroute.errors import QrouteError
from qroute.model import MLATransformer
from qroute.planner import HolderDemand, Plan, Request, combine_batch, forced_plan
from qroute.runtime import transport
from qroute.runtime.holder import FETCH, AttentionSpec
from qroute.policies import Decision, PolicyState, decide
from qroute.runtime.cache import BlockCache
from qroute.runtime.links import Link, RankLink, reply_order
from qroute.runtime.ops import splice_moved_
from qroute.runtime.store import BlockStore, Directory
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import Corpus

DEFAULT_CACHE_BLOCKS = 256  # the block cache's capacity when a caching policy opens it without one set
MODES = ("predicate", "route", "fetch", "local", "reuse", "load")  # the last two: policies with a block cache


@dataclass
class Measured:
    """Measured seconds by cost-model phase group, plus the common base not priced."""

    network: float = 0.0  # probe + transfer + return
    compute: float = 0.0
    merge: float = 0.0
    base: float = 0.0  # own-context attention and the rest of the model
    messages: int = 0
    bytes: int = 0

    @property
    def total(self) -> float:
        return self.network + self.compute + self.merge

    def add(self, other: "Measured") -> None:
        for name in ("network", "compute", "merge", "base", "messages", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {"network_s": self.network, "compute_s": self.compute, "merge_s": self.merge,
                "total_s": self.total, "base_s": self.base, "messages": self.messages, "bytes": self.bytes}  # fmt: skip


@dataclass
class Session:
    request: AgentRequest
    plan: Plan | None
    own_kv: Tensor  # [L, P + decoded, D]
    moved: Tensor | None  # [L, M, D] fetched or re-prefilled rows, at reuse positions
    routed: dict[int, list[int]]  # holder -> selected blocks attended there
    inplace: list[int]  # selected blocks held by this instance itself
    next_inputs: list[int]  # this step's input tokens: the greedy token, then drafts
    position: int
    paths: dict[int, str | None] = field(default_factory=dict)  # holder -> path of its messages
    logits: list[Tensor] = field(default_factory=list)  # per step [step_tokens, V]
    inputs: list[list[int]] = field(default_factory=list)  # per step
    measured: Measured = field(default_factory=Measured)
    cached: list[int] = field(default_factory=list)  # selected blocks found in the requester's cache (copied at opening)
    keep: frozenset[int] = frozenset()  # holders whose fetched blocks went to the cache
    cache_hits: int = 0  # selected blocks found in the cache at opening
    serial: int = 0  # the executor's count of sessions opened before it: which session a trace record belongs to

    @property
    def primitives(self) -> dict[int, str]:
        return {h.holder: h.primitive for h in self.plan.holders} if self.plan else {}


class Executor:
    """Runs sessions on the requester `rank` against the holders in `directory`.

    Holders are reached through `links` where given (e.g. the host tier's in-process holder),
    else as processes over the path's process group. With the model on a GPU, the executor
    splices, attends moved KV and merges with the Triton kernels (`qroute.kernels`) and waits
    for the device before reading a clock.
    """

    def __init__(
        self, rank: int, model: MLATransformer, corpus: Corpus, directory: Directory, cost: CostModel,
        store: BlockStore | None = None, links: dict[int, Link] | None = None,
    ) -> None:  # fmt: skip
        self.rank, self.model, self.corpus, self.directory, self.cost = rank, model, corpus, directory, cost
        self.spec = AttentionSpec.of(model)
        self.store = store  # blocks held by this instance itself (world size 1)
        self.links = dict(links or {})
        self.device = model.device
        self.trace: list[dict] = []  # measured exchanges, per holder and layer (and setup per holder)
        self.opened = 0  # sessions opened so far (`Session.serial`)
        self.steps = 0
        self.base_steps: list[float] = []  # per decode step: its seconds beyond what the cost model prices
        self.force_path: str | None = None  # calibration: every message on this path, whatever the plan says
        self.cache: BlockCache | None = None  # fetch-and-keep (policies reuse and load)
        self.policy_state = PolicyState()  # their rent accounts and the holders' reported utilisation
        self.heard: dict[int, float] = {}  # holder -> perf_counter() of its last reply here: how long it has idled

    def link(self, holder: int, path: str | None) -> Link:
        """How to reach `holder` with a message on `path`."""
        from qroute.runtime import paths

        return self.links.get(holder) or RankLink(holder, paths.group(path))

    def sync(self) -> None:
        """Wait for queued GPU work (no-op on the CPU), so that a clock read after it measures it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ planning

    def request_for(self, r: AgentRequest, remote: dict[int, list[int]] | None = None) -> Request | None:
        """The planner's view of an agent request (`remote`: holder -> blocks still to serve; default: every
        selected block not held here); None when there is none."""
        remote = self._remote(r) if remote is None else remote
        demands = []
        for holder, blocks in sorted(remote.items()):
            idx = [b - self.corpus.chunks[r.chunk].first_block for b in blocks]
            bs = self.corpus.block_size
            demands.append(HolderDemand(holder, len(blocks) * bs, prefill_tokens=(max(idx) + 1) * bs, idle_s=self.idle_s(holder)))
        if not demands:
            return None
        rows = r.step_tokens * self.model.config.num_heads  # rows = tokens x heads per step
        return Request(rows, self.model.config.num_layers, tuple(demands), r.steps, self._scattered(r, remote), r.offset)

    def _remote(self, r: AgentRequest) -> dict[int, list[int]]:
        return {h: b for h, b in self.directory.by_holder(r.blocks).items() if h != self.rank}

    @staticmethod
    def _scattered(r: AgentRequest, remote: dict[int, list[int]]) -> bool:
        """Whether some holder's part of the selection is not one contiguous run of blocks."""
        if r.sparse:
            return True
        return any(b != blocks[0] + i for blocks in remote.values() for i, b in enumerate(blocks))

    def plan_for(self, r: AgentRequest, mode: str, remote: dict[int, list[int]] | None = None) -> Decision | None:
        """The decision for `r` under `mode` (a forced primitive, the predicate or a caching policy)."""
        if mode not in MODES:
            raise QrouteError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        request = self.request_for(r, remote)
        if request is None:
            return None
        if mode in ("route", "fetch", "local"):
            return Decision(forced_plan(self.cost, request, mode))
        blocks = self._remote(r) if remote is None else remote
        return decide(mode, self.cost, request, blocks, self.policy_state)

    def learn(self, sessions: Sequence[Session], measured: dict) -> None:
        """Feed the cost model's online scale (if it has one) a batch that has finished: its measured phase groups
        (`Measured.as_dict`) against the profile's own prediction, under the primitive all its holders ran; a batch
        that mixed primitives teaches nothing (its error cannot be told apart)."""
        if self.cost.online is None:
            return
        plans = [s.plan for s in sessions if s.plan is not None]
        kinds = {h.primitive for p in plans for h in p.holders}
        if len(kinds) == 1:
            static = combine_batch(self.cost.static(), [(p.request, p.holders) for p in plans])
            self.cost.online.observe(kinds.pop(), predicted_groups(static), measured)

    # ------------------------------------------------------------------ sessions

    def open(self, r: AgentRequest, mode: str) -> Session:
        """Prefill the agent's own context, plan, and pay what fetch or local pay once."""
        self.sync()
        t0 = time.perf_counter()
        own = self.model.prefill(r.task).kv
        by_holder = self.directory.by_holder(r.blocks)
        inplace = by_holder.pop(self.rank, [])
        cached = self._cached(by_holder) if mode in ("reuse", "load") else []
        decision = self.plan_for(r, mode, by_holder)
        p = decision.plan if decision else None
        self.sync()
        primitives = {h.holder: h.primitive for h in p.holders} if p else {}
        s = Session(r, p, own, None, {}, inplace, r.step_inputs(0, r.first_token), r.first_position)
        s.cached, s.keep, s.cache_hits = cached, decision.keep if decision else frozenset(), len(cached)
        s.serial, self.opened = self.opened, self.opened + 1
        s.measured.base += time.perf_counter() - t0
        s.routed = {h: b for h, b in by_holder.items() if primitives[h] == "route"}
        s.paths = {h.holder: self.force_path or h.path for h in p.holders} if p else {}
        t1, network, first_record = time.perf_counter(), s.measured.network, len(self.trace)
        fetched = {h: b for h, b in by_holder.items() if primitives[h] == "fetch"}
        moved = self._fetch(s, fetched)
        moved += [self._rebuild(s, b) for h, b in by_holder.items() if primitives[h] == "local"]
        moved += [self._from_cache(s, cached)] if cached else []
        s.moved = (moved[0] if len(moved) == 1 else torch.cat(moved, dim=1)) if moved else None
        self.sync()
        adapt = time.perf_counter() - t1 - (s.measured.network - network)  # all of it but the network
        s.measured.compute += adapt
        if fetched and len(moved) == len(fetched):  # fetches alone: what their replies cost beyond splice and gather
            self._trace_adapt(adapt, len(fetched), self.trace[first_record:])
        return s

    def _trace_adapt(self, seconds: float, fetched: int, records: list[dict]) -> None:
        """One record per request that fetched (and did nothing else in `open`): the compute it paid there, with the
        parts the model prices from other records (its splices; the holders' gathers of scattered blocks), so that
        calibration can price the rest per reply (`GatherCoeffs.reply_s`)."""
        splice_s = sum(r["seconds"] for r in records if r["kind"] == "splice")
        gather_s = sum(r["holder_compute_s"] for r in records if r["kind"] == "fetch" and r["scattered"])
        self.trace.append({"kind": "adapt", "seconds": seconds, "fetched": fetched, "splice_s": splice_s,
                           "gather_s": gather_s})  # fmt: skip

    def _cached(self, by_holder: dict[int, list[int]]) -> list[int]:
        """Take the selected blocks found in the cache out of `by_holder` (in place); they are attended here."""
        if self.cache is None:
            self.cache = BlockCache(DEFAULT_CACHE_BLOCKS, self.model.config.num_layers, self.corpus.block_size,
                                    self.model.config.latent_width, self.model.dtype, self.device)  # fmt: skip
        hits = self.cache.lookup([b for blocks in by_holder.values() for b in blocks])
        self.trace.append({"kind": "cache", "t": time.perf_counter(), "hits": len(hits),
                           "misses": sum(map(len, by_holder.values())) - len(hits)})  # fmt: skip
        for h in list(by_holder):
            by_holder[h] = [b for b in by_holder[h] if b not in set(hits)]
            if not by_holder[h]:
                del by_holder[h]
        return hits

    def _from_cache(self, s: Session, blocks: list[int]) -> Tensor:
        """Copy the cache hits out (their pins released) and splice the copy by the offset, like a fetched reply."""
        kv = self.cache.gather(blocks)  # [L, n * bs, D], a new buffer unless one contiguous run of slots
        kv = kv.clone() if kv._base is not None else kv
        self.cache.release(blocks)
        t0 = time.perf_counter()
        self._splice(kv, s.request.offset)
        self.trace.append({"kind": "splice", "seconds": time.perf_counter() - t0, "tokens": kv.shape[1], "layers": kv.shape[0]})
        return kv

    def _splice(self, kv: Tensor, offset: int) -> None:
        """Rotate the rope part of `kv [L, T, D]` by `+offset`, in place (one kernel launch on a GPU)."""
        splice_moved_(kv, offset, self.spec.rope, self.spec.latent)
        self.sync()

    def _fetch(self, s: Session, wanted: dict[int, list[int]]) -> list[Tensor]:
        """FETCH from every holder at once, each on its planned path; then splice each reply's rope part by the offset.

        Accounting: network = wall time until the last reply - the holders' gathers (what
        the model prices as the scattered gather; a contiguous run is sent as it is stored,
        so its gather is ~0); the rest of `open` (gathers, splices, re-prefills) is compute.
        """
        if not wanted:
            return []
        links = {h: self.link(h, s.paths.get(h)) for h in wanted}
        self.sync()
        t_post = time.perf_counter()
        posted = {h: links[h].isend(FETCH, [], [torch.tensor(b)]) for h, b in wanted.items()}
        replies = {}
        for h in reply_order(posted):  # one order for every requester (`reply_order`)
            replies[h] = (links[h].recv(), time.perf_counter() - t_post)
        replies = {h: replies[h] for h in posted}  # back in the order asked: the moved blocks follow it
        for works in posted.values():
            transport.wait_all(works)
        received = time.perf_counter() - t_post
        s.measured.network += received - sum(msg.meta[0] / 1e9 for msg, _ in replies.values())
        moved, first_record = [], len(self.trace)
        for h, (msg, rtt) in replies.items():
            self._note_load(h, msg)
            if h in s.keep and self.cache.insert(wanted[h], msg.tensors[0]):  # a copy kept as stored (canonical)
                self.cache.release(wanted[h])
            moved.append(self._splice_reply(s, h, msg, rtt, len(posted), kept=h in s.keep))
        for record in self.trace[first_record:]:
            if record["kind"] == "fetch":
                record["wall_s"] = received  # the whole exchange as the request pays it (sends completed)
        return moved

    def idle_s(self, holder: int, at: float | None = None) -> float | None:
        """Seconds since `holder`'s last reply here, at perf_counter() `at` (default: now); None before the first. What
        this requester knows of the holder's idle time (another requester may have kept it busy since)."""
        heard = self.heard.get(holder)
        return None if heard is None else max(0.0, (time.perf_counter() if at is None else at) - heard)

    def _note_load(self, holder: int, msg: transport.Message) -> None:
        """A reply from `holder` arrived (its idle time starts again); it may carry its busy fraction (ppm) after its
        compute time: what policy `load` prices."""
        self.heard[holder] = time.perf_counter()
        if len(msg.meta) > 1:
            self.policy_state.load[holder] = msg.meta[1] / 1e6

    def _splice_reply(self, s: Session, h: int, msg: transport.Message, rtt: float, parallel: int, kept: bool = False) -> Tensor:
        """Splice one FETCHED reply `kv [L, T, D]` in place (rope part by `+offset`); trace the exchange and the splice."""
        kv = msg.tensors[0]
        t0 = time.perf_counter()
        self._splice(kv, s.request.offset)
        splice_s = time.perf_counter() - t0
        self._trace_fetch(s, h, msg, rtt, parallel, kept)
        self.trace.append({"kind": "splice", "seconds": splice_s, "tokens": kv.shape[1], "layers": kv.shape[0]})
        return kv

    def _trace_fetch(self, s: Session, h: int, msg: transport.Message, rtt: float, parallel: int, kept: bool = False) -> None:
        kv = msg.tensors[0]
        self.trace.append({"kind": "fetch", "primitive": "fetch", "request": s.request.id, "holder": h, "rtt_s": rtt,
                           "path": s.paths.get(h), "holder_compute_s": msg.meta[0] / 1e9, "bytes": msg.nbytes,
                           "tokens": kv.shape[1], "layers": kv.shape[0], "parallel": parallel, "cold": True,
                           "scattered": bool(s.plan and s.plan.request.sparse), "kept": kept})  # fmt: skip
        s.measured.messages += 1
        s.measured.bytes += msg.nbytes

    def _rebuild(self, s: Session, blocks: list[int]) -> Tensor:
        """`local`: re-prefill the chunk up to its last selected block at the reuse positions."""
        r, bs = s.request, self.corpus.block_size
        chunk = self.corpus.chunks[r.chunk]
        idx = torch.tensor([b - chunk.first_block for b in blocks])
        length = (int(idx.max()) + 1) * bs
        self.sync()
        t0 = time.perf_counter()
        kv = self.model.reprefill(chunk.tokens[:length], r.offset + torch.arange(length))
        rows = (idx[:, None] * bs + torch.arange(bs)).reshape(-1)
        kv = kv.index_select(1, rows.to(kv.device))
        self.sync()
        elapsed = time.perf_counter() - t0
        self.trace.append({"kind": "local", "primitive": "local", "request": r.id, "seconds": elapsed, "tokens": length})
        return kv

    def step(self, sessions: Sequence[Session]) -> None:
        """One decode step for a batch of sessions (rows bound for a holder share a message)."""
        from qroute.runtime.batch import BatchContext

        spans, start = [], 0
        for s in sessions:
            spans.append((start, start + len(s.next_inputs)))
            start += len(s.next_inputs)
        tokens = torch.tensor([t for s in sessions for t in s.next_inputs])
        positions = torch.cat([torch.arange(s.position, s.position + len(s.next_inputs)) for s in sessions])
        self.sync()
        t0 = time.perf_counter()
        context = BatchContext(self, sessions, spans)
        out = self.model.forward(tokens, positions, context)
        self.sync()
        wall = time.perf_counter() - t0
        for s, (a, b) in zip(sessions, spans):
            s.logits.append(out.logits[a:b])
            s.inputs.append(s.next_inputs)
            s.own_kv = torch.cat((s.own_kv, out.kv[:, a:b]), dim=1)
            s.position += b - a
            s.next_inputs = s.request.step_inputs(len(s.inputs), int(out.logits[b - 1].argmax()))
        self.steps += 1
        self.base_steps.append(wall - context.measured.total)  # the step's own forward pass, not priced
        share = (wall - context.measured.total) / len(sessions)
        for s in sessions:
            s.measured.base += share
        context.charge(sessions)
