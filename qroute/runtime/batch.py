"""`BatchContext`: what one decode layer does across instances, for a batch of sessions.

At every layer, for the new tokens of every session (each session's tokens are a span of
the batch; rows = tokens x heads):
    1. attend the session's own context plus its new tokens, causally (common to all
       primitives, not priced),
    2. route: the rows of every session routed to a holder travel in one message (one group
       per session: its token span, its chunk's offset, its blocks there); the holder shifts
       them by `-offset`, attends its blocks, returns (o, lse) per token,
    3. attend each session's moved KV (fetched or re-prefilled),
    4. merge the partial states per session (the first merge after the route exchange pays more, the
       cost model's `after_route_s`: measured on the dev VM, in batches of 8 sessions routed to one holder
       a merge took 71 us, the same merge alone after an exchange 131 us).
Phases run one after another (no overlap), so what is measured is what the cost model
prices: network (probe + transfer + return), compute (holder's or requester's), merge.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from qroute.attention import AttentionState, attend
from qroute.model.context import causal_mask
from qroute.runtime import transport
from qroute.runtime.holder import ROUTE, route_states
from qroute.runtime.links import reply_order
from qroute.runtime.ops import attend_moved, merge_parts

if TYPE_CHECKING:
    from qroute.runtime.executor import Executor, Session


def _rows(state: AttentionState, tokens: int) -> AttentionState:
    """`[tokens, H, ...]` -> `[tokens * H, ...]` (flat rows)."""
    return AttentionState(state.o.reshape(-1, state.o.shape[-1]), state.lse.reshape(-1))


class BatchContext:
    """The `Context` a batch decode step attends through (see the module doc)."""

    def __init__(self, executor: "Executor", sessions: Sequence["Session"], spans: Sequence[tuple[int, int]]) -> None:
        from qroute.runtime.executor import Measured

        self.ex, self.sessions, self.spans = executor, list(sessions), list(spans)
        self.measured = Measured()

    def attend(self, layer: int, q: Tensor, kv_new: Tensor, positions: Tensor, scale: float) -> AttentionState:
        """q [T, H, D] (the sessions' spans), kv_new [T, D] -> o [T, H, latent], lse [T, H]."""
        heads, latent = q.shape[1], self.ex.spec.latent
        parts = [[self._own(layer, q, kv_new, s, span, scale)] for s, span in zip(self.sessions, self.spans)]
        for b, states in self._route(layer, q).items():  # 2. route
            parts[b] += states
        moved = [0] * len(self.sessions)  # tokens of moved KV each session attended before its merge
        nth = 0  # sessions of this layer that attended moved KV before (a batch's further requests: `group_s`)
        for b, (s, (a, e)) in enumerate(zip(self.sessions, self.spans)):  # 3. moved KV
            if s.moved is not None:
                self.ex.sync()
                t0 = time.perf_counter()
                keys = s.moved[layer]
                moved[b] = keys.shape[0]
                parts[b].append(attend_moved(q[a:e], keys, scale, self.ex.spec.latent, self.ex.corpus.block_size))
                self._timed("moved", layer, t0, rows=(e - a) * heads, tokens=keys.shape[0], first_step=not s.inputs, nth=nth)
                nth += 1
        merged, waited = [], False
        for b, part in enumerate(parts):  # 4. merge
            self.ex.sync()
            t0 = time.perf_counter()
            m = merge_parts(part)
            merged.append((m.o.view(-1, heads, latent), m.lse.view(-1, heads)))
            routed = bool(self.sessions[b].routed) and not waited  # the first merge after the layer's exchange
            waited = waited or routed
            self._timed("merge", layer, t0, rows=m.lse.numel(), partials=len(part), routed=routed,
                        moved=moved[b], first_step=not self.sessions[b].inputs, nth=b)  # fmt: skip
        return AttentionState(torch.cat([o for o, _ in merged]), torch.cat([lse for _, lse in merged]))

    def _timed(self, kind: str, layer: int, t0: float, **shape) -> None:
        """Charge a requester-side call to its phase and keep it in the trace (what calibration fits)."""
        self.ex.sync()
        seconds = time.perf_counter() - t0
        if kind == "merge":
            self.measured.merge += seconds
        else:
            self.measured.compute += seconds
        self.ex.trace.append({"kind": kind, "step": self.ex.steps, "layer": layer, "seconds": seconds, **shape})

    def _own(self, layer: int, q: Tensor, kv_new: Tensor, s: "Session", span, scale: float) -> AttentionState:
        """1. the session's own context and its new tokens, causal among them: flat rows `[k * H]`."""
        a, e = span
        k, heads = e - a, q.shape[1]
        keys = torch.cat((s.own_kv[layer], kv_new[a:e]), dim=0)
        mask = causal_mask(s.own_kv.shape[1], k, q.device).repeat_interleave(heads, dim=0)
        return attend(q[a:e].reshape(k * heads, -1), keys, keys[:, : self.ex.spec.latent], scale, mask=mask, check=False)

    def _route(self, layer: int, q: Tensor) -> dict[int, list[AttentionState]]:
        """Send each (holder, path) one message with all its rows; collect the states per session (flat rows)."""
        out: dict[int, list[AttentionState]] = {}
        by_holder: dict[tuple[int, str | None], list[int]] = {}
        for b, s in enumerate(self.sessions):
            for h in s.routed:
                by_holder.setdefault((h, s.paths.get(h)), []).append(b)
        links = {key: self.ex.link(*key) for key in by_holder}
        self.ex.sync()
        t_post = time.perf_counter()
        messages = {key: self._message(key[0], members, q) for key, members in by_holder.items()}
        idle = {key: self.ex.idle_s(key[0], t_post) for key in by_holder}  # before the replies restart the clocks
        posted = {key: links[key].isend(ROUTE, [layer], m) for key, m in messages.items()}
        holder_compute, first_record = 0.0, len(self.ex.trace)
        for key in reply_order(by_holder):  # one order for every requester: no two wait on each other's holders
            members = by_holder[key]
            msg = links[key].recv()
            self.ex._note_load(key[0], msg)
            o, lse = (t.clone() for t in msg.tensors)  # the states where this instance computes (part of the return)
            holder_compute = max(holder_compute, msg.meta[0] / 1e9)
            first = all(not self.sessions[b].inputs for b in members)  # the sessions' first decode step
            self._record(layer, key, messages[key], msg, t_post, len(by_holder), first, idle[key], self._planned_idle(key[0], members),
                         members)  # fmt: skip
            row = 0
            for b in members:
                k = self.spans[b][1] - self.spans[b][0]
                out.setdefault(b, []).append(_rows(AttentionState(o[row : row + k], lse[row : row + k]), k))
                row += k
        for works in posted.values():
            transport.wait_all(works)
        self.ex.sync()
        wall = time.perf_counter() - t_post if by_holder else 0.0
        for record in self.ex.trace[first_record:]:  # the whole exchange as the step pays it (sends completed)
            record["wall_s"] = wall
        self.measured.network += wall - holder_compute
        self.measured.compute += holder_compute
        self._inplace(layer, q, out)
        return out

    def _planned_idle(self, holder: int, members: list[int]) -> float | None:
        """How long `holder` had sat idle when the member sessions were planned (their demands' `idle_s`, the longest;
        None where no plan knew): what the planner priced its wake-up from, and what calibration fits it against."""
        known = [d.idle_s for b in members if (p := self.sessions[b].plan) is not None
                 for d in p.request.demands if d.holder == holder and d.idle_s is not None]  # fmt: skip
        return max(known) if known else None

    def _message(self, holder: int, members: list[int], q: Tensor) -> list[Tensor]:
        """q rows of the member sessions' tokens, one group per session (first row, rows, offset, count), block ids."""
        groups, blocks, row = [], [], 0
        for b in members:
            s, (a, e) = self.sessions[b], self.spans[b]
            groups.append((row, e - a, s.request.offset, len(s.routed[holder])))
            blocks += s.routed[holder]
            row += e - a
        rows = torch.cat([q[self.spans[b][0] : self.spans[b][1]] for b in members])
        return [rows.contiguous(), torch.tensor(groups, dtype=torch.long), torch.tensor(blocks, dtype=torch.long)]

    def _record(self, layer: int, key: tuple[int, str | None], message: list[Tensor], reply: transport.Message,
                t_post: float, parallel: int, first_step: bool, idle_s: float | None = None,
                planned_idle_s: float | None = None, members: Sequence[int] = ()) -> None:  # fmt: skip
        holder, path = key
        q, groups = message[0], message[1]
        sent = sum(t.numel() * t.element_size() for t in message)
        self.measured.messages += 2
        self.measured.bytes += reply.nbytes + sent
        bs = self.ex.corpus.block_size
        self.ex.trace.append({
            "kind": "route", "primitive": "route", "step": self.ex.steps, "layer": layer, "holder": holder, "path": path,
            "rows": q.shape[0] * q.shape[1], "groups": [[t * q.shape[1], c * bs] for _, t, _, c in groups.tolist()],
            "rtt_s": time.perf_counter() - t_post, "holder_compute_s": reply.meta[0] / 1e9,
            "payload_out": q.numel() * q.element_size(), "payload_back": reply.nbytes, "parallel": parallel,
            "first_step": first_step, "t_post": t_post, "idle_s": idle_s, "planned_idle_s": planned_idle_s,
            "sessions": sorted(self.sessions[b].serial for b in members),
            "holder_start": reply.meta[2] / 1e9 if len(reply.meta) > 2 else None,  # same host: same clock
            "holder_cpu_s": reply.meta[3] / 1e9 if len(reply.meta) > 3 else None,  # its CPU time: a core shared or not
        })  # fmt: skip

    def _inplace(self, layer: int, q: Tensor, out: dict[int, list[AttentionState]]) -> None:
        """Blocks held by this instance itself (world size 1): route to ourselves, no message."""
        self.ex.sync()
        t0 = time.perf_counter()
        for b, s in enumerate(self.sessions):
            if s.inplace:
                a, e = self.spans[b]
                groups = torch.tensor([(0, e - a, s.request.offset, len(s.inplace))])
                state = route_states(self.ex.store, self.ex.spec, layer, q[a:e], groups, torch.tensor(s.inplace))
                out.setdefault(b, []).append(_rows(state, e - a))
        self.ex.sync()
        self.measured.compute += time.perf_counter() - t0

    def charge(self, sessions: Sequence["Session"]) -> None:
        """Split this step's measured phases over the sessions (they shared the messages)."""
        from qroute.runtime.executor import Measured

        n = len(sessions)
        for s in sessions:
            s.measured.add(Measured(self.measured.network / n, self.measured.compute / n, self.measured.merge / n))
        sessions[0].measured.messages += self.measured.messages
        sessions[0].measured.bytes += self.measured.bytes
