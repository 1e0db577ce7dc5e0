"""The cost model: five phases (probe, transfer, compute, return, merge) per primitive.

Pure functions of (geometry, profile, request shape): no I/O, no clocks. Every formula is
plain arithmetic, so `rows` and `tokens` may be numbers or numpy arrays (batched planning).

Request shape, per holder group (DESIGN.md section 3):
    R  query rows per layer per decode step (tokens x heads), sent together (batched)
    C  selected tokens on each holder;  H holders with that demand
    L  layers;  N decode steps the moved or recomputed KV serves (reuse)

route  per layer and step, all H holders at once: one probe (latencies overlap) plus
       `per_holder_s` for each holder beyond the first, the rows out to every holder (the
       path's `bytes_serial` fraction of the other holders' bytes moves after the first's: 1 on
       one port), the holders' partial attention (in parallel, but for the path's
       `holder_serial` fraction of the others' compute),
       the states back, one merge of H + 1 partials (the requester's own state and one per
       holder; it follows a wait on the network: the merge's `after_route_s`). Once per
       request: the path's `cold_s` (the first exchange wakes the holders), and the stalls
       the median request meets over its N*L exchanges' seconds (`PathSpec.stalls_s`).
fetch  once: all H holders asked at once (one probe, moved by the path's `fetch_offset_s`,
       plus `fetch_per_holder_s` per extra holder), C*L KV rows from each (bytes serialise); then a splice
       (contiguous chunk reused at offset != 0) or a scattered gather (sparse selection);
       then per layer and step a local attention over the H*C moved tokens and a merge of 2
       partials (own + moved).
local  once: re-prefill each holder's chunk (its first `prefill_tokens` tokens: a sparse
       selection needs the chunk up to its last selected block) on the requester; then,
       as fetch, a local attention and a merge per layer and step.
The requester's attention over its own context is common to all three and not priced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qroute.cost.profile import PathSpec, Profile
from qroute.cost.terms import capped
from qroute.errors import QrouteError, positive_int
from qroute.geometry import Coefficients, Geometry

PRIMITIVES = ("route", "fetch", "local")
PHASES = ("probe", "transfer", "compute", "return", "merge")


@dataclass(frozen=True)
class Phases:
    """Seconds per phase (numbers or numpy arrays). `ret` is the `return` phase."""

    probe: Any = 0.0
    transfer: Any = 0.0
    compute: Any = 0.0
    ret: Any = 0.0
    merge: Any = 0.0

    @property
    def total(self):
        return self.probe + self.transfer + self.compute + self.ret + self.merge

    def __add__(self, other: "Phases") -> "Phases":
        return Phases(*(a + b for a, b in zip(self._values(), other._values())))

    def scaled(self, k) -> "Phases":
        return Phases(*(v * k for v in self._values()))

    def _values(self) -> tuple:
        return (self.probe, self.transfer, self.compute, self.ret, self.merge)

    def as_dict(self) -> dict[str, float]:
        """JSON form: phase name -> seconds (scalar phases only)."""
        return {name: float(v) for name, v in zip(PHASES, self._values())}


@dataclass(frozen=True)
class Shape:
    """One group of H holders, each holding C of the request's selected tokens."""

    rows: int
    tokens: int
    layers: int
    steps: int = 1
    holders: int = 1
    sparse: bool = False
    offset: int = 0
    prefill_tokens: int | None = None  # tokens local re-prefills per holder (default: `tokens`)
    idle_s: float | None = None  # how long the holders sat idle before the request (None: unknown; `PathSpec.cold_at`)

    def __post_init__(self) -> None:
        _positive("rows", self.rows)
        check_idle(self.idle_s)
        _positive("chunk tokens", self.tokens)
        if self.prefill_tokens is not None:
            _positive("prefill tokens", self.prefill_tokens)
        positive_int("layers", self.layers)
        positive_int("reuse steps", self.steps)
        positive_int("holders", self.holders)
        if not isinstance(self.offset, int) or isinstance(self.offset, bool):
            raise QrouteError(f"offset={self.offset!r}: expected an integer")


def predicted_groups(phases: Phases) -> dict:
    """A prediction in the phase groups the runtime measures (network: probe, transfer and return)."""
    network = float(phases.probe + phases.transfer + phases.ret)
    return {"network_s": network, "compute_s": float(phases.compute), "merge_s": float(phases.merge),
            "total_s": float(phases.total)}  # fmt: skip


@dataclass(frozen=True)
class CostModel:
    """Geometry x profile: `route`, `fetch` and `local` phase times for a request shape."""

    geometry: Geometry
    profile: Profile
    kv_dtype: str = "bf16"
    row_dtype: str = "bf16"
    online: Any = field(default=None, compare=False)  # cost.online.OnlineScale: the planner rescales by it

    def __post_init__(self) -> None:
        object.__setattr__(self, "_coef", self.geometry.coefficients(self.kv_dtype, self.row_dtype))

    @property
    def coef(self) -> Coefficients:
        return self._coef

    def rescaled(self, primitive: str, phases: Phases) -> Phases:
        """`phases` that `primitive` contributes, as the online scale has them (unchanged without one)."""
        return phases if self.online is None else self.online.phases(primitive, phases)

    def static(self) -> "CostModel":
        """This model without its online scale: the profile's own prediction."""
        return self if self.online is None else replace(self, online=None)

    # -- compute-side coefficients (vectorisable in rows / tokens) --------------------

    def attention_s(self, rows, tokens, local: bool = False, further: bool = False):
        """Partial attention of `rows` query rows over `tokens` keys, one layer (on a holder, or `local`ly); `further`:
        a local attention of a batch's further request in the layer, its fixed part `group_s` where fitted
        (profile/13; a holder's batch: `AttentionCoeffs.batched_s`)."""
        a = self.profile.compute.local_attention if local else self.profile.compute.attention
        read = tokens * self.coef.kv_token_layer_bytes / a.read_Bps
        flops = rows * tokens * self.geometry.attn_flops_per_row_token / a.flops_per_s
        return _fixed(a, further and local) + read + flops + rows * a.per_row_s

    def exchange_compute_s(self, longest, holders: int):
        """The compute phase of a route exchange asking `holders` holders at once whose longest attention alone takes
        `longest` seconds: the slowest holder's, `attention.parallel_excess` more per holder beyond the first (holders
        sharing cores; the slowest of several noisy computes), as the runtime measures it."""
        return longest * (1 + (holders - 1) * self.profile.compute.attention.parallel_excess)

    def first_step_s(self, attention, idle_s: float | None = None):
        """What a holder's `attention` seconds (one layer) cost more in a request's first decode step (caches cold),
        the holder idle `idle_s` seconds before it (None: unknown)."""
        return attention * self.profile.compute.attention.first_step_at(idle_s)

    def merge_s(self, rows, partials, routed: bool = False, moved=0, further: bool = False):
        """Merge of `partials` states of `rows` rows, one layer; `routed`: it follows a route exchange; `moved`: it
        follows an attention over that many tokens of moved KV; `further`: a batch's further request in the layer,
        its fixed part `group_s` where fitted (profile/13)."""
        m = self.profile.compute.merge
        return (_fixed(m, further) + rows * partials * self.coef.o_row_bytes / m.Bps + (m.after_route_s if routed else 0.0)
                + moved * m.per_moved_token_s)  # fmt: skip

    def further_saving_s(self, requests: int, attending: int) -> float:
        """Seconds per layer that `requests` requests decoded together, `attending` of them over moved KV, pay less than
        each alone: every merge after the layer's first at `merge.group_s`, every attention over moved KV after the
        first at `local_attention.group_s`, where fitted (profile/13; what `merge_s` and `attention_s` price with
        `further`, summed: the simulator's batch)."""
        m, a = self.profile.compute.merge, self.profile.compute.local_attention
        return (max(requests - 1, 0) * (m.fixed_s - _fixed(m, True))
                + max(attending - 1, 0) * (a.fixed_s - _fixed(a, True)))  # fmt: skip

    def splice_s(self, tokens, layers):
        """RoPE re-rotation of every layer's rope part of `tokens` spliced tokens."""
        s = self.profile.compute.splice
        return s.fixed_s + layers * s.per_layer_s + tokens * layers * s.per_token_layer_s

    def gather_s(self, tokens, holders, layers):
        """Scattered gather of `tokens` selected tokens (all layers) from `holders` holders."""
        g = self.profile.compute.gather
        return g.fixed_s + holders * layers * g.per_holder_layer_s + tokens * layers * g.per_entry_s

    def reprefill_s(self, tokens, layers):
        """Re-prefill one chunk of `tokens` tokens through `layers` layers."""
        r, g = self.profile.compute.reprefill, self.geometry
        dense = layers * tokens * g.dense_flops_per_token_layer
        attention = layers * tokens * (tokens + 1) / 2 * g.attn_flops_per_token_pair
        return r.fixed_s + dense / r.flops_per_s + attention / r.attn_flops_per_s

    # -- message sizes -----------------------------------------------------------------

    def route_bytes(self, rows):
        """Bytes of one route exchange with one holder (rows out + states back)."""
        return rows * (self.coef.q_row_bytes + self.coef.o_row_bytes)

    def fetch_bytes(self, tokens, layers):
        """Bytes of one fetch from one holder: `tokens` tokens' KV over `layers` layers."""
        return tokens * layers * self.coef.kv_token_layer_bytes

    # -- primitives ------------------------------------------------------------------

    def route(self, s: Shape, path: PathSpec) -> Phases:
        """All H holders routed; phases summed over N steps and L layers."""
        c = self.coef
        exchange = self.route_bytes(s.rows)
        ports = 1 + (s.holders - 1) * path.bytes_serial  # the holders' bytes, as one holder's
        attention = self.attention_s(s.rows, s.tokens)
        per_layer = Phases(  # the others' serial compute is waited for in the exchange: probe (network), as measured
            probe=path.alpha(exchange) + (s.holders - 1) * path.per_holder_s + _waited(attention, s.holders, path),
            transfer=ports * path.route_move_s(s.rows * c.q_row_bytes, exchange),
            compute=self.exchange_compute_s(attention, s.holders),
            ret=ports * path.route_move_s(s.rows * c.o_row_bytes, exchange),
            merge=self.merge_s(s.rows, s.holders + 1, routed=True),
        )
        n = s.steps * s.layers  # exchanges: the first wakes the holders, the tail stalls some
        stalls = path.stalls_s(n, s.holders, per_layer.total - per_layer.merge)
        first = s.layers * self.first_step_s(per_layer.compute, s.idle_s)
        return per_layer.scaled(n) + Phases(probe=path.cold_at(s.idle_s) + stalls, compute=first)

    def adapt_s(self, s: Shape):
        """Making moved KV usable after fetching `s.tokens` from each of `s.holders` holders (`fetched_adapt_s`)."""
        return self.fetched_adapt_s(s.holders * s.tokens, s.holders, s.layers, s.sparse, s.offset)

    def fetched_adapt_s(self, tokens, holders, layers, sparse, offset):
        """What a request pays on the requester once it fetched `tokens` tokens from `holders` holders: the gather of
        scattered blocks (`sparse`), the splice (reused at `offset` != 0) and each reply's own handling (`reply_s`)."""
        adapt = self.gather_s(tokens, holders, layers) if sparse else 0.0
        adapt = adapt + (self.splice_s(tokens, layers) if offset else 0.0)
        return adapt + holders * self.profile.compute.gather.reply_s

    def moved_per_layer(self, s: Shape) -> Phases:
        """Per layer and step once KV is on the requester: attention over it, merge with the own state."""
        moved = s.holders * s.tokens
        return Phases(compute=self.attention_s(s.rows, moved, local=True), merge=self.merge_s(s.rows, 2, moved=moved))

    def moved_first_step(self, per_layer: Phases) -> Phases:
        """What one layer of a request's first decode step pays beyond `per_layer` (`moved_per_layer`'s attention over
        moved KV and merge): their first-step extras (`local_attention.first_step_excess`, `merge.first_step_excess`)."""
        c = self.profile.compute
        return Phases(compute=per_layer.compute * c.local_attention.first_step_excess,
                      merge=per_layer.merge * c.merge.first_step_excess)  # fmt: skip

    def moved_steps(self, s: Shape) -> Phases:
        """Attention over moved KV and merges, every layer of every step, the first step's extras included."""
        per_layer = self.moved_per_layer(s)
        return per_layer.scaled(s.steps * s.layers) + self.moved_first_step(per_layer).scaled(s.layers)

    def fetch(self, s: Shape, path: PathSpec) -> Phases:
        """All H holders fetched once, then N*L local attentions over the moved tokens."""
        nbytes = self.fetch_bytes(s.tokens, s.layers)
        once = Phases(
            probe=path.fetch_fixed_s(nbytes, s.sparse) + (s.holders - 1) * path.fetch_extra_s,
            transfer=(1 + (s.holders - 1) * path.fetch_bytes_serial) * path.fetch_move_s(nbytes),
            compute=self.adapt_s(s),
        )
        return once + self.moved_steps(s)

    def local(self, s: Shape) -> Phases:
        """All H chunks re-prefilled on the requester, then N*L local attentions."""
        prefill = s.tokens if s.prefill_tokens is None else s.prefill_tokens
        once = Phases(compute=s.holders * self.reprefill_s(prefill, s.layers))
        return once + self.moved_steps(s)

    def primitive(self, name: str, s: Shape, path: PathSpec | None) -> Phases:
        """Phases of primitive `name` ('route', 'fetch' or 'local')."""
        if name == "route":
            return self.route(s, path)
        if name == "fetch":
            return self.fetch(s, path)
        if name == "local":
            return self.local(s)
        raise QrouteError(f"unknown primitive {name!r}: expected one of {', '.join(PRIMITIVES)}")


def best_path(paths: dict[str, PathSpec], nbytes, fetch: bool = False) -> tuple[str, PathSpec]:
    """The path with the smallest `alpha + nbytes / beta` for one message (scalar bytes); `fetch`: for a fetch
    exchange (the path's `fetch_offset_s` counted)."""
    name = min(paths, key=lambda n: paths[n].fetch_time(nbytes) if fetch else paths[n].time(nbytes))
    return name, paths[name]


def path_flips(a: PathSpec, b: PathSpec) -> list[float]:
    """Message sizes at which the cheaper of paths `a` and `b` changes, ascending.

    Within a pair of regimes the crossing is closed form, `(alpha_b - alpha_a) / (1/beta_a - 1/beta_b)`,
    and counts when it lies where both regimes apply; a regime boundary counts when the winner
    differs on its two sides.
    """
    flips = [x for lo, hi in _regime_bounds(a, b) if (x := _affine_crossing(a, b, lo, hi)) is not None]
    for cut in _cuts(a, b):
        before, after = cut * (1 - 1e-9), cut
        if (a.time(before) < b.time(before)) != (a.time(after) < b.time(after)):
            flips.append(float(cut))
    return sorted(flips)


def path_crossover_bytes(a: PathSpec, b: PathSpec) -> float | None:
    """The smallest message size at which the cheaper of `a` and `b` changes, or None if one always wins."""
    flips = path_flips(a, b)
    return flips[0] if flips else None


def _cuts(a: PathSpec, b: PathSpec) -> list[float]:
    """Sizes where either path changes regime: its small regime's bound and its knots."""
    return sorted({x for p in (a, b) for x in ([p.small.below_bytes] if p.small else []) + [k[0] for k in p.knots]})


def _regime_bounds(a: PathSpec, b: PathSpec) -> list[tuple[float, float]]:
    cuts = [0.0, *_cuts(a, b), float("inf")]
    return list(zip(cuts[:-1], cuts[1:]))


def _affine_crossing(a: PathSpec, b: PathSpec, lo: float, hi: float) -> float | None:
    """The size in [lo, hi) where `a` and `b` cost the same, both affine there (evaluated at two sizes inside)."""
    x1 = lo + (hi - lo) / 3 if hi < float("inf") else max(lo, 1.0)
    x2 = lo + 2 * (hi - lo) / 3 if hi < float("inf") else 2 * x1
    d1, d2 = a.time(x1) - b.time(x1), a.time(x2) - b.time(x2)
    if d1 == d2:
        return None
    x = x1 - d1 * (x2 - x1) / (d2 - d1)
    return float(x) if lo <= x < hi and x > 0 else None


def _positive(name: str, value) -> None:
    """An int >= 1, or (batched planning) a numpy array of them."""
    if isinstance(value, np.ndarray):
        if value.size and value.min() < 1:
            raise QrouteError(f"{name}: got {value.min()!r}: expected every value >= 1")
    else:
        positive_int(name, value)


__all__ = [
    "PHASES",
    "PRIMITIVES",
    "CostModel",
    "Phases",
    "Shape",
    "best_path",
    "path_crossover_bytes",
]


def _waited(compute, holders: int, path: PathSpec):
    """Seconds a parallel exchange of `holders` equal computes of `compute` seconds (a number or numpy array) waits
    beyond the longest: the others' `holder_serial` fraction of at most `serial_cap_s` each (`terms.overlapped`).
    The runtime measures it as network time (the exchange's wall time less the slowest holder's compute)."""
    return (holders - 1) * path.holder_serial * capped(compute, path.serial_cap_s)


def _fixed(coeffs, further: bool) -> float:
    """The fixed seconds of a requester-side computation (`AttentionCoeffs` or `MergeCoeffs`): `group_s` for a batch's
    `further` request where fitted (profile/13), else `fixed_s`."""
    return coeffs.group_s if further and coeffs.group_s is not None else coeffs.fixed_s


def check_idle(idle_s) -> None:
    """None, or a holder's idle seconds: a number >= 0."""
    if idle_s is None:
        return
    if isinstance(idle_s, bool) or not isinstance(idle_s, (int, float)) or not idle_s >= 0:
        raise QrouteError(f"idle_s={idle_s!r}: expected None or seconds >= 0")
