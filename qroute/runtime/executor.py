"""The requester: execute each request's Plan for real, layer by layer, and time every phase.

A session is one sub-agent request in flight. Opening it prefills the agent's own context,
plans (or forces) a primitive per holder, and does what is paid once: fetch (holder
gathers, requester splices by `+offset`) or local (re-prefill the chunk at its reuse
positions). Each decode step then runs the model over a batch of sessions with a
`BatchContext`, which at every layer:
    1. attends each session's own context plus its new token (common to all primitives),
    2. routes: the rows of every session routed to a holder travel in one message; the
       holder shifts them by `-offset`, attends its blocks, returns (o, lse),
    3. attends each session's moved KV (fetched or re-prefilled),
    4. merges the partial states per session.
Phases run one after another (no overlap), so what is measured is what the cost model
prices: network (probe + transfer + return), compute (holder's or requester's), merge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from qroute.attention import AttentionState, attend, merge_states, splice
from qroute.cost.model import CostModel, Phases
from qroute.errors import QrouteError
from qroute.model import MLATransformer
from qroute.planner import HolderDemand, Plan, Request, forced_plan, plan
from qroute.runtime import transport
from qroute.runtime.holder import FETCH, FETCHED, ROUTE, ROUTED, STOP, AttentionSpec, route_states
from qroute.runtime.store import BlockStore, Directory
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import Corpus

MODES = ("predicate", "route", "fetch", "local")


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


def predicted_groups(phases: Phases) -> dict:
    """A prediction in the measured phase groups."""
    network = float(phases.probe + phases.transfer + phases.ret)
    return {"network_s": network, "compute_s": float(phases.compute), "merge_s": float(phases.merge),
            "total_s": float(phases.total)}  # fmt: skip


@dataclass
class Session:
    request: AgentRequest
    plan: Plan | None
    own_kv: Tensor  # [L, P + decoded, D]
    moved: Tensor | None  # [L, M, D] fetched or re-prefilled rows, at reuse positions
    routed: dict[int, list[int]]  # holder -> selected blocks attended there
    inplace: list[int]  # selected blocks held by this instance itself
    next_token: int
    position: int
    logits: list[Tensor] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    measured: Measured = field(default_factory=Measured)

    @property
    def primitives(self) -> dict[int, str]:
        return {h.holder: h.primitive for h in self.plan.holders} if self.plan else {}


class Executor:
    """Runs sessions on the requester `rank` against the holders in `directory`."""

    def __init__(
        self, rank: int, model: MLATransformer, corpus: Corpus, directory: Directory, cost: CostModel,
        store: BlockStore | None = None,
    ) -> None:  # fmt: skip
        self.rank, self.model, self.corpus, self.directory, self.cost = rank, model, corpus, directory, cost
        self.spec = AttentionSpec.of(model)
        self.store = store  # blocks held by this instance itself (world size 1)
        self.trace: list[dict] = []  # measured exchanges, per holder and layer (and setup per holder)
        self.steps = 0

    # ------------------------------------------------------------------ planning

    def request_for(self, r: AgentRequest) -> Request | None:
        """The planner's view of an agent request; None when every selected block is held here."""
        demands = []
        for holder, blocks in sorted(self.directory.by_holder(r.blocks).items()):
            if holder == self.rank:
                continue
            idx = [b - self.corpus.chunks[r.chunk].first_block for b in blocks]
            bs = self.corpus.block_size
            demands.append(HolderDemand(holder, len(blocks) * bs, prefill_tokens=(max(idx) + 1) * bs))
        if not demands:
            return None
        rows = self.model.config.num_heads  # one decode token per step
        return Request(rows, self.model.config.num_layers, tuple(demands), r.steps, self._scattered(r), r.offset)

    def _scattered(self, r: AgentRequest) -> bool:
        """Whether some holder's part of the selection is not one contiguous run of blocks."""
        if r.sparse:
            return True
        return any(b != blocks[0] + i for blocks in self.directory.by_holder(r.blocks).values() for i, b in enumerate(blocks))

    def plan_for(self, r: AgentRequest, mode: str) -> Plan | None:
        request = self.request_for(r)
        if request is None:
            return None
        if mode == "predicate":
            return plan(self.cost, request)
        if mode not in MODES:
            raise QrouteError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        return forced_plan(self.cost, request, mode)

    # ------------------------------------------------------------------ sessions

    def open(self, r: AgentRequest, mode: str) -> Session:
        """Prefill the agent's own context, plan, and pay what fetch or local pay once."""
        t0 = time.perf_counter()
        own = self.model.prefill(r.task).kv
        p = self.plan_for(r, mode)
        primitives = {h.holder: h.primitive for h in p.holders} if p else {}
        by_holder = self.directory.by_holder(r.blocks)
        s = Session(r, p, own, None, {}, by_holder.pop(self.rank, []), r.first_token, r.first_position)
        s.measured.base += time.perf_counter() - t0
        s.routed = {h: b for h, b in by_holder.items() if primitives[h] == "route"}
        moved = self._fetch(s, {h: b for h, b in by_holder.items() if primitives[h] == "fetch"})
        moved += [self._rebuild(s, b) for h, b in by_holder.items() if primitives[h] == "local"]
        s.moved = torch.cat(moved, dim=1) if moved else None
        return s

    def _fetch(self, s: Session, wanted: dict[int, list[int]]) -> list[Tensor]:
        """FETCH from every holder at once; splice each reply's rope part by the chunk's offset."""
        posted = {h: (time.perf_counter(), transport.isend(h, FETCH, [], [torch.tensor(b)])) for h, b in wanted.items()}
        out = []
        for h, (t_post, works) in posted.items():
            msg = transport.recv(h)
            rtt = time.perf_counter() - t_post
            transport.wait_all(works)
            gather_s = msg.meta[0] / 1e9
            kv = msg.tensors[0].clone()
            t0 = time.perf_counter()
            latent = self.spec.latent
            kv[..., latent:] = splice(kv[..., latent:], s.request.offset, self.spec.rope)
            splice_s = time.perf_counter() - t0
            s.measured.network += rtt - gather_s
            s.measured.compute += gather_s + splice_s
            self.trace.append({"request": s.request.id, "holder": h, "primitive": "fetch", "rtt_s": rtt,
                               "holder_compute_s": gather_s, "splice_s": splice_s, "bytes": msg.nbytes})  # fmt: skip
            s.measured.messages += 1
            s.measured.bytes += msg.nbytes
            out.append(kv)
        return out

    def _rebuild(self, s: Session, blocks: list[int]) -> Tensor:
        """`local`: re-prefill the chunk up to its last selected block at the reuse positions."""
        r, bs = s.request, self.corpus.block_size
        chunk = self.corpus.chunks[r.chunk]
        idx = torch.tensor([b - chunk.first_block for b in blocks])
        length = (int(idx.max()) + 1) * bs
        t0 = time.perf_counter()
        kv = self.model.reprefill(chunk.tokens[:length], r.offset + torch.arange(length))
        rows = (idx[:, None] * bs + torch.arange(bs)).reshape(-1)
        kv = kv.index_select(1, rows)
        elapsed = time.perf_counter() - t0
        s.measured.compute += elapsed
        self.trace.append({"request": r.id, "primitive": "local", "reprefill_s": elapsed, "tokens": length})
        return kv

    def step(self, sessions: Sequence[Session]) -> None:
        """One greedy decode step for a batch of sessions (rows bound for a holder share a message)."""
        tokens = torch.tensor([s.next_token for s in sessions])
        positions = torch.tensor([s.position for s in sessions])
        t0 = time.perf_counter()
        context = BatchContext(self, sessions)
        out = self.model.forward(tokens, positions, context)
        wall = time.perf_counter() - t0
        for b, s in enumerate(sessions):
            s.logits.append(out.logits[b])
            s.inputs.append(s.next_token)
            s.own_kv = torch.cat((s.own_kv, out.kv[:, b : b + 1]), dim=1)
            s.next_token = int(out.logits[b].argmax())
            s.position += 1
        self.steps += 1
        share = (wall - context.measured.total) / len(sessions)
        for s in sessions:
            s.measured.base += share
        context.charge(sessions)



def stop_holders(rank: int, holders: Sequence[int]) -> None:
    """Tell every holder this requester needs nothing more."""
    for h in holders:
        if h != rank:
            transport.send(h, STOP)


class BatchContext:
    """The `Context` a batch decode step attends through (see the module doc for the four steps)."""

    def __init__(self, executor: Executor, sessions: Sequence[Session]) -> None:
        self.ex, self.sessions = executor, list(sessions)
        self.measured = Measured()

    def attend(self, layer: int, q: Tensor, kv_new: Tensor, positions: Tensor, scale: float) -> AttentionState:
        """q [B, H, D] (one new token per session), kv_new [B, D] -> o [B, H, latent], lse [B, H]."""
        latent = self.ex.spec.latent
        parts: list[list[AttentionState]] = []
        for b, s in enumerate(self.sessions):  # 1. own context + the new token
            keys = torch.cat((s.own_kv[layer], kv_new[b : b + 1]), dim=0)
            parts.append([attend(q[b], keys, keys[:, :latent], scale, check=False)])
        for b, state in self._route(layer, q).items():  # 2. route
            parts[b] += state
        t0 = time.perf_counter()
        for b, s in enumerate(self.sessions):  # 3. moved KV
            if s.moved is not None:
                parts[b].append(attend(q[b], s.moved[layer], s.moved[layer][:, :latent], scale, check=False))
        t1 = time.perf_counter()
        merged = [merge_states(p, check=False) for p in parts]  # 4. merge
        t2 = time.perf_counter()
        self.measured.compute += t1 - t0
        self.measured.merge += t2 - t1
        return AttentionState(torch.stack([m.o for m in merged]), torch.stack([m.lse for m in merged]))

    def _route(self, layer: int, q: Tensor) -> dict[int, list[AttentionState]]:
        """Send each routed holder one message with all its rows; collect the states per session."""
        out: dict[int, list[AttentionState]] = {}
        by_holder: dict[int, list[int]] = {}
        for b, s in enumerate(self.sessions):
            for h in s.routed:
                by_holder.setdefault(h, []).append(b)
        t_post = time.perf_counter()
        messages = {h: self._message(h, rows, q) for h, rows in by_holder.items()}
        posted = {h: transport.isend(h, ROUTE, [layer], m) for h, m in messages.items()}
        holder_compute = 0.0
        for h, rows in by_holder.items():
            msg = transport.recv(h)
            holder_compute = max(holder_compute, msg.meta[0] / 1e9)
            sent = sum(t.numel() * t.element_size() for t in messages[h])
            self.measured.messages += 2
            self.measured.bytes += msg.nbytes + sent
            self.ex.trace.append({"step": self.ex.steps, "layer": layer, "holder": h, "primitive": "route",
                                  "rows": len(rows) * q.shape[1], "rtt_s": time.perf_counter() - t_post,
                                  "holder_compute_s": msg.meta[0] / 1e9, "bytes_out": sent, "bytes_back": msg.nbytes})  # fmt: skip
            o, lse = msg.tensors
            for i, b in enumerate(rows):
                out.setdefault(b, []).append(AttentionState(o[i], lse[i]))
        for works in posted.values():
            transport.wait_all(works)
        wall = time.perf_counter() - t_post if by_holder else 0.0
        self.measured.network += wall - holder_compute
        self.measured.compute += holder_compute
        self._inplace(layer, q, out)
        return out

    def _message(self, holder: int, rows: list[int], q: Tensor) -> list[Tensor]:
        groups, blocks = [], []
        for i, b in enumerate(rows):
            s = self.sessions[b]
            groups.append((i, s.request.offset, len(s.routed[holder])))
            blocks += s.routed[holder]
        return [q[rows].contiguous(), torch.tensor(groups, dtype=torch.long), torch.tensor(blocks, dtype=torch.long)]

    def _inplace(self, layer: int, q: Tensor, out: dict[int, list[AttentionState]]) -> None:
        """Blocks held by this instance itself (world size 1): route to ourselves, no message."""
        t0 = time.perf_counter()
        for b, s in enumerate(self.sessions):
            if s.inplace:
                groups = torch.tensor([(0, s.request.offset, len(s.inplace))])
                state = route_states(self.ex.store, self.ex.spec, layer, q[b : b + 1], groups, torch.tensor(s.inplace))
                out.setdefault(b, []).append(AttentionState(state.o[0], state.lse[0]))
        self.measured.compute += time.perf_counter() - t0

    def charge(self, sessions: Sequence[Session]) -> None:
        """Split this step's measured phases over the sessions (they shared the messages)."""
        n = len(sessions)
        for s in sessions:
            share = Measured(self.measured.network / n, self.measured.compute / n, self.measured.merge / n)
            s.measured.add(share)
        sessions[0].measured.messages += self.measured.messages
        sessions[0].measured.bytes += self.measured.bytes
