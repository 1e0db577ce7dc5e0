"""A path of a profile: one fabric between two instances, its line, small-message regime, knots and the terms one
exchange in a loop does not see (`profile.py`'s docstring lists them; docs/cost-model.md defines each)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from qroute.cost.terms import idle_curve, knot_alpha, like, pick, poisson_median


@dataclass(frozen=True)
class SmallRegime:
    """Exchanges under `below_bytes` cost `alpha_s + bytes / beta_Bps`."""

    below_bytes: float
    alpha_s: float
    beta_Bps: float


@dataclass(frozen=True)
class PathSpec:
    """One fabric between two instances: probe latency `alpha_s` (s), rate `beta_Bps` (B/s), optional small regime."""

    alpha_s: float
    beta_Bps: float
    source: str = ""
    small: SmallRegime | None = None
    cold_s: float = 0.0  # once per routed request: its first exchange wakes idle holders
    per_holder_s: float = 0.0  # per parallel exchange, for each holder beyond the first
    fetch_offset_s: float = 0.0  # a fetch exchange's fixed seconds beyond a route exchange of the same bytes
    holder_serial: float = 0.0  # fraction of the other holders' compute not overlapped in a parallel exchange
    fetch_per_holder_s: float | None = None  # a parallel fetch's extra per further holder (None: `per_holder_s`)
    bytes_serial: float = 1.0  # fraction of the other holders' route bytes moved after the largest's (1: one port)
    serial_cap_s: float | None = None  # `holder_serial` applies to at most this much of each other holder's compute
    stall_rate: float = 0.0  # stalls per second of warm one-holder route exchanges (profile/6)
    stall_s: float = 0.0  # a stall's seconds beyond the line
    stall_rate_multi: float = 0.0  # the same for exchanges with several holders at once
    stall_s_multi: float = 0.0
    fetch_beta_Bps: float | None = None  # profile/8: a fetch's own rate (one large message), where it has one (None: beta)
    cold_idle: tuple[tuple[float, float], ...] = ()  # profile/9: (idle seconds, wake-up seconds), measured
    fetch_bytes_serial: float = 1.0  # profile/9: fraction of the other holders' fetch bytes moved after the largest's
    chunk_bytes: float | None = None  # profile/9: a message moves in chunks of this many bytes, one hand-off each
    chunk_s: float = 0.0  # profile/9: a message's seconds per chunk beyond its first (fetches; route exchanges too)
    stall_per_exchange: float | None = None  # profile/10: stalls per warm one-holder route exchange (None: `stall_rate`)
    stall_per_exchange_multi: float | None = None  # the same for exchanges with several holders at once
    knots: tuple[tuple[float, float], ...] = ()  # profile/12: route exchanges' measured (bytes, seconds), interpolated (`alpha`)
    fetch_scatter_s: float = 0.0  # profile/14: a fetch of a scattered selection's fixed seconds beyond a contiguous one's

    def chunk_extra_s(self, nbytes):
        """Seconds a message of `nbytes` pays for its chunks beyond the first (`chunk_s` each; 0 for a stream): a fetch's
        reply, and each message of a route exchange (on the dev VM's shared memory, one holder's route exchanges of
        512-2048 rows, 2.2-8.9 MB, took 0.4-1.5 ms above the line through smaller ones)."""
        if not self.chunk_bytes or not self.chunk_s:
            return 0.0 * nbytes
        out = np.maximum(np.ceil(np.asarray(nbytes, dtype=np.float64) / self.chunk_bytes) - 1, 0) * self.chunk_s
        return float(out) if out.ndim == 0 else out

    def route_move_s(self, nbytes, exchange_bytes):
        """Seconds one message of `nbytes` of a route exchange of `exchange_bytes` (out and back) moves: its bytes at
        the exchange's rate and its chunks beyond the first."""
        return nbytes / self.beta(exchange_bytes) + self.chunk_extra_s(nbytes)

    def fetch_move_s(self, nbytes):
        """Seconds one holder's fetch reply of `nbytes` moves: its bytes at the fetch rate and its further chunks."""
        return nbytes / self.fetch_beta(nbytes) + self.chunk_extra_s(nbytes)

    def cold_at(self, idle_s: float | None = None) -> float:
        """Wake-up seconds of a request's first exchange with a holder idle `idle_s` seconds (`cold_idle`; None:
        unknown, `cold_s`)."""
        return idle_curve(self.cold_idle, idle_s, self.cold_s)

    @property
    def fetch_extra_s(self) -> float:
        """A parallel fetch's extra seconds for each holder beyond the first."""
        return self.per_holder_s if self.fetch_per_holder_s is None else self.fetch_per_holder_s

    def stalls_per_exchange(self, multi: bool, exchange_s):
        """Mean stalls of one route exchange of `exchange_s` seconds, one holder or several (`multi`): `stall_per_exchange`
        (profile/10; 0 where None) plus `stall_rate` per second of it (a share that grows with the exchange's length)."""
        per, rate = (self.stall_per_exchange_multi, self.stall_rate_multi) if multi else (self.stall_per_exchange, self.stall_rate)
        return (0.0 if per is None else per) + rate * exchange_s

    def stalls_s(self, exchanges, holders, exchange_s):
        """Seconds of stalls that the median request of `exchanges` route exchanges of `exchange_s` seconds each with
        `holders` holders at once pays (numbers or numpy arrays): the median of a Poisson count of mean `exchanges *`
        `stalls_per_exchange` (`terms.poisson_median`: 0 below mu ~ ln 2) times `stall_s`, of the one- or several-holder
        class."""
        multi = np.asarray(holders) > 1
        per = np.where(multi, self.stalls_per_exchange(True, exchange_s), self.stalls_per_exchange(False, exchange_s))
        out = poisson_median(exchanges * per) * np.where(multi, self.stall_s_multi, self.stall_s)
        return float(out) if out.ndim == 0 else out

    def fetch_alpha(self, nbytes):
        """Fixed seconds of one fetch exchange of `nbytes`: the line's probe moved by `fetch_offset_s`, never below 0
        (the knots are route exchanges')."""
        return np.maximum(self.line_alpha(nbytes) + self.fetch_offset_s, 0.0)

    def fetch_fixed_s(self, nbytes, scattered: bool = False):
        """Fixed seconds of one fetch exchange of `nbytes` (`fetch_alpha`), plus `fetch_scatter_s` where its selection is
        scattered (the holder gathers every block apart: on two H100s such fetches cost 133-333 us more network)."""
        return self.fetch_alpha(nbytes) + (self.fetch_scatter_s if scattered else 0.0)

    def fetch_beta(self, nbytes):
        """Rate of one fetch exchange of `nbytes`: `fetch_beta_Bps` where fitted, else the line's."""
        return self.line_beta(nbytes) if self.fetch_beta_Bps is None else self.fetch_beta_Bps + 0 * nbytes

    def fetch_time(self, nbytes):
        """Seconds of one fetch exchange of `nbytes`."""
        return self.fetch_alpha(nbytes) + self.fetch_move_s(nbytes)

    def line_alpha(self, nbytes):
        """Probe latency of the path's line (and small regime) at `nbytes`, without the knots: what fetches pay."""
        if self.small is None:
            return self.alpha_s + 0 * nbytes
        return pick(self.small.alpha_s, nbytes < self.small.below_bytes, self.alpha_s)

    def line_beta(self, nbytes):
        """Rate of the path's line (and small regime) at `nbytes`, without the knots."""
        if self.small is None:
            return self.beta_Bps + 0 * nbytes
        return pick(self.small.beta_Bps, nbytes < self.small.below_bytes, self.beta_Bps)

    def alpha(self, nbytes):
        """Probe latency of a route exchange of `nbytes` (number or numpy array): from the first knot up, what makes
        `time` the knots' interpolation at the line's rate (`terms.knot_alpha`); below, the line's (`line_alpha`)."""
        if not self.knots:
            return self.line_alpha(nbytes)
        a, inside = knot_alpha(self.knots, nbytes, self.line_beta(nbytes))
        return like(nbytes, np.where(inside, a, self.line_alpha(nbytes)))

    def beta(self, nbytes):
        """Rate of a route exchange of `nbytes` (number or numpy array): the line's (knots move only `alpha`)."""
        return self.line_beta(nbytes)

    def time(self, nbytes):
        """Seconds to exchange `nbytes` (a number or a numpy array)."""
        return self.alpha(nbytes) + nbytes / self.beta(nbytes)

    def to_dict(self) -> dict:
        d = {"alpha_s": self.alpha_s, "beta_Bps": self.beta_Bps, "source": self.source,
             "cold_s": self.cold_s, "per_holder_s": self.per_holder_s, "fetch_offset_s": self.fetch_offset_s,
             "holder_serial": self.holder_serial, "bytes_serial": self.bytes_serial}  # fmt: skip
        if self.fetch_per_holder_s is not None:
            d["fetch_per_holder_s"] = self.fetch_per_holder_s
        if self.serial_cap_s is not None:
            d["serial_cap_s"] = self.serial_cap_s
        if self.fetch_beta_Bps is not None:
            d["fetch_beta_Bps"] = self.fetch_beta_Bps
        if self.cold_idle:
            d["cold_idle"] = [list(p) for p in self.cold_idle]
        if self.fetch_bytes_serial != 1.0:
            d["fetch_bytes_serial"] = self.fetch_bytes_serial
        if self.chunk_bytes:
            d.update(chunk_bytes=self.chunk_bytes, chunk_s=self.chunk_s)
        d.update({k: getattr(self, k) for k in STALL_FIELDS if getattr(self, k)})
        d.update({k: getattr(self, k) for k in PER_EXCHANGE if getattr(self, k) is not None})
        if self.small is not None:
            d["small"] = asdict(self.small)
        if self.knots:
            d["knots"] = [list(k) for k in self.knots]
        if self.fetch_scatter_s:
            d["fetch_scatter_s"] = self.fetch_scatter_s
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PathSpec":
        small = d.get("small")
        return cls(d["alpha_s"], d["beta_Bps"], d.get("source", ""), SmallRegime(**small) if small else None,
                   d.get("cold_s", 0.0), d.get("per_holder_s", 0.0), d.get("fetch_offset_s", 0.0),
                   d.get("holder_serial", 0.0), d.get("fetch_per_holder_s"), d.get("bytes_serial", 1.0),
                   d.get("serial_cap_s"), *(d.get(k, 0.0) for k in STALL_FIELDS), d.get("fetch_beta_Bps"),
                   tuple(map(tuple, d.get("cold_idle", ()))), d.get("fetch_bytes_serial", 1.0), d.get("chunk_bytes"),
                   d.get("chunk_s", 0.0), *(d.get(k) for k in PER_EXCHANGE), tuple(map(tuple, d.get("knots", ()))),
                   d.get("fetch_scatter_s", 0.0))  # fmt: skip


STALL_FIELDS = ("stall_rate", "stall_s", "stall_rate_multi", "stall_s_multi")
PER_EXCHANGE = ("stall_per_exchange", "stall_per_exchange_multi")  # profile/10
