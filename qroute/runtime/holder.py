"""The holder: prefill the blocks placed here, then serve route, fetch and ping requests.

Protocol (message kinds; see transport.py for framing):
    ROUTE  meta [layer]; tensors q [n, H, D] (n tokens), groups [G, 4] (first, tokens, offset, count),
           blocks [sum count] -> ROUTED meta [compute_ns, busy_ppm, start_ns (perf_counter_ns, this host), cpu_ns (the
           serving thread's CPU time during the compute)]; tensors o [n, H, latent], lse [n, H] float32
    FETCH  tensors blocks [n] -> FETCHED meta [gather_ns, busy_ppm]; tensors kv [L, n * block_size, D]
    PING   any payload -> PONG with the same payload (calibration: ping-pong)
    STREAM meta [remaining]; any payload -> ACK when remaining == 0 (calibration: streaming rate)
    STOP   the sender needs nothing more; the holder returns once every requester stopped
Route shifts each group's query rope part by `-offset` here, where the keys live, so a
requester whose rows attend chunks reused at different offsets sends its rows once.
`busy_ppm`: the fraction of the last `BUSY_WINDOW_S` this holder spent computing, in parts
per million (its utilisation, which a load-aware requester prices as queueing).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from qroute.attention import AttentionState, attend, empty_state, merge_states, shift_query
from qroute.attention.rope import RopeSpec
from qroute.errors import QrouteError
from qroute.model import MLATransformer
from qroute.runtime import transport
from qroute.runtime.store import BlockStore, Directory
from qroute.workload.corpus import Corpus

ROUTE, ROUTED, FETCH, FETCHED, PING, PONG, STOP, STREAM, ACK = 1, 2, 3, 4, 5, 6, 7, 8, 9


@dataclass(frozen=True)
class AttentionSpec:
    """What a holder needs to compute partial attention: the latent width, RoPE and softmax scale."""

    latent: int
    rope: RopeSpec
    scale: float

    @classmethod
    def of(cls, model: MLATransformer) -> "AttentionSpec":
        c = model.config
        return cls(c.kv_lora_rank, c.rope, c.softmax_scale)


def build_store(rank: int, corpus: Corpus, directory: Directory, model: MLATransformer,
                device: torch.device | str | None = None, timing_only: bool = False) -> BlockStore:  # fmt: skip
    """Prefill every chunk with a block held on `rank` at canonical positions; keep those blocks on `device`
    (default: the model's, a holder's GPU under NCCL).

    `timing_only` (calibration, which times exchanges and compute and checks no output): prefill only the longest
    chunk held and store its first tokens for every other one, a real prefill's values at the same canonical
    positions, the same shapes and bytes; what the blocks hold then answers no query exactly."""
    c = model.config
    held = set(directory.blocks_on(rank))
    store = BlockStore(sorted(held), c.num_layers, corpus.block_size, c.latent_width, model.dtype,
                       model.device if device is None else device)  # fmt: skip
    chunks = [chunk for chunk in corpus.chunks if held.intersection(chunk.blocks(corpus.block_size))]
    if timing_only and chunks:
        longest = max(chunks, key=lambda chunk: chunk.tokens.numel())
        kv = model.reprefill(longest.tokens, torch.arange(longest.tokens.numel()))
        for chunk in chunks:
            store.put_chunk(chunk.first_block, kv[..., : chunk.tokens.numel(), :])
        return store
    for chunk in chunks:
        kv = model.reprefill(chunk.tokens, torch.arange(chunk.tokens.numel()))
        store.put_chunk(chunk.first_block, kv)
    return store


def route_states(
    store: BlockStore, spec: AttentionSpec, layer: int, q: Tensor, groups: Tensor, blocks: Tensor
) -> AttentionState:
    """Partial states of `q [n, H, D]` over their groups of blocks at `layer`: `o [n, H, latent]`, `lse [n, H]`.

    Group g = (first, tokens, offset, count): tokens `first .. first + tokens` attend the next
    `count` block ids, stored at canonical positions and reused at `offset`, so their rope
    parts are rotated by `-offset`; one attention call per group (tokens x heads rows).
    A token in several groups (chunks reused at different offsets) gets their merge.
    """
    n, heads, width = q.shape
    per_token: list[list[AttentionState]] = [[] for _ in range(n)]
    start = 0
    for first, tokens, offset, count in groups.tolist():
        ids = blocks[start : start + count]
        start += count
        rows = q[first : first + tokens].reshape(tokens * heads, width)
        shifted = torch.cat((rows[:, : spec.latent], shift_query(rows[:, spec.latent :], offset, spec.rope)), dim=-1)
        keys = store.layer_rows(layer, ids)
        state = attend(shifted, keys, keys[:, : spec.latent], spec.scale, check=False)
        o, lse = state.o.view(tokens, heads, -1), state.lse.view(tokens, heads)
        for i in range(tokens):
            per_token[first + i].append(AttentionState(o[i], lse[i]))
    states = [merge_states(s, check=False) if s else empty_state(q[0], spec.latent) for s in per_token]
    return AttentionState(torch.stack([s.o for s in states]), torch.stack([s.lse for s in states]))


BUSY_WINDOW_S = 0.25


@dataclass
class ServeStats:
    """What a holder did, for the run's report; `busy_ppm` its recent utilisation."""

    routed_rows: int = 0
    route_messages: int = 0
    fetched_blocks: int = 0
    compute_s: float = 0.0
    requesters: set = field(default_factory=set)
    recent: deque = field(default_factory=deque)  # (end time, seconds busy) of the last computations

    def busy(self, seconds: float) -> int:
        """Record `seconds` of compute ending now; the busy fraction of the last window, in ppm."""
        now = time.perf_counter()
        self.compute_s += seconds
        self.recent.append((now, seconds))
        while self.recent and self.recent[0][0] < now - BUSY_WINDOW_S:
            self.recent.popleft()
        return int(min(1.0, sum(s for _, s in self.recent) / BUSY_WINDOW_S) * 1e6)


def serve(store: BlockStore, spec: AttentionSpec, requesters: Sequence[int], groups: Sequence | None = None,
          limit: int | None = None) -> ServeStats:  # fmt: skip
    """Answer messages until every requester in `requesters` has sent STOP, on the world and on every path group.

    Each path group (one per fabric link between the instances; default: those the launcher
    opened, `runtime.paths`) is served by its own thread and answered on the group it came from.
    """
    from qroute.runtime import paths

    groups = paths.groups() if groups is None else groups
    stats = ServeStats()
    if not paths.world_carries_messages():  # one path carries everything: serve it here, nothing on the world group
        _serve_group(store, spec, requesters, paths.group(None), stats, limit)
        return stats
    failed: list[BaseException] = []

    def serve_path(group) -> None:
        try:
            _serve_group(store, spec, requesters, group, stats)
        except BaseException as exc:  # kept for the main thread: a holder that stopped serving a path fails
            failed.append(exc)

    threads = [threading.Thread(target=serve_path, args=(g,), daemon=True) for g in groups]
    for t in threads:
        t.start()
    _serve_group(store, spec, requesters, None, stats, limit)
    if limit is not None:
        return stats  # fault injection: leave now, without waiting for the path groups
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    return stats


def _serve_group(store: BlockStore, spec: AttentionSpec, requesters: Sequence[int], group, stats: ServeStats,
                 limit: int | None = None) -> None:  # fmt: skip
    stopped: set[int] = set()
    served = 0
    only = requesters[0] if len(requesters) == 1 else None  # a receive from one sender: ~75 us less per round trip
    poller = transport.Poller(requesters, group) if only is None and transport.exact() else None  # NCCL: no any-source
    while stopped != set(requesters) and (limit is None or served < limit):
        served += 1
        msg = poller.recv() if poller else transport.recv(only, group)
        stats.requesters.add(msg.src)
        if msg.kind == STOP:
            stopped.add(msg.src)
            if poller:
                poller.drop(msg.src)
        elif msg.kind == ROUTE:
            _serve_route(store, spec, msg, stats, group)
        elif msg.kind == FETCH:
            _serve_fetch(store, msg, stats, group)
        elif msg.kind == PING:
            transport.send(msg.src, PONG, msg.meta, msg.tensors, group)
        elif msg.kind == STREAM:
            if msg.meta[0] == 0:
                landed(msg)  # acknowledge data that is here, not data that is on its way (a one-sided path)
                transport.send(msg.src, ACK, [], [], group)
        else:
            raise QrouteError(f"holder got message kind {msg.kind} from {msg.src}: expected ROUTE, FETCH, PING, STREAM or STOP")


def _serve_route(store: BlockStore, spec: AttentionSpec, msg: transport.Message, stats: ServeStats, group=None) -> None:
    (layer,) = msg.meta
    q, groups, blocks = msg.tensors
    t0 = time.perf_counter_ns()  # the host's monotonic clock: a requester on this host reads it as its own
    cpu0 = time.thread_time_ns()
    state = route_states(store, spec, layer, q, groups, blocks)
    _sync(store)
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    cpu = time.thread_time_ns() - cpu0  # this thread's CPU time meanwhile: below `elapsed` where it waited for a core
    stats.routed_rows += q.shape[0] * q.shape[1]
    stats.route_messages += 1
    transport.send(msg.src, ROUTED, [int(elapsed * 1e9), stats.busy(elapsed), t0, cpu], [state.o, state.lse], group)


def _serve_fetch(store: BlockStore, msg: transport.Message, stats: ServeStats, group=None) -> None:
    (blocks,) = msg.tensors
    t0 = time.perf_counter()
    kv = store.gather(blocks)
    _sync(store)
    elapsed = time.perf_counter() - t0
    stats.fetched_blocks += blocks.numel()
    transport.send(msg.src, FETCHED, [int(elapsed * 1e9), stats.busy(elapsed)], [kv], group)


def _sync(store: BlockStore) -> None:
    """A GPU holder's compute is timed once it has run, not when it was queued (on this thread's stream)."""
    if store.kv.is_cuda:
        torch.cuda.current_stream(store.kv.device).synchronize()


def landed(msg: transport.Message) -> None:
    """Wait until the message's GPU tensors are in this instance's memory (a reply's too, before a clock stops)."""
    for t in msg.tensors:
        if t.is_cuda:
            torch.cuda.current_stream(t.device).synchronize()
            return
