"""A quick calibration on the live cluster: a measured profile in a few seconds.

Run on a requester while the holders serve. It times what the runtime runs, in the state
it runs it: the route and fetch exchanges with a holder (alpha and beta of the path), the
holder's per-request route compute, the requester's merge, splice, block gather and
re-prefill; each fitted by non-negative least squares on robust medians. Between samples
the model runs a small forward, as a decode step does between its layers' round trips:
measured here, back-to-back exchanges run twice as fast as interleaved ones (warm caches
and threads), which is not what the runtime sees. `qroute calibrate` extends this.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import time
from typing import Callable

import numpy as np
import torch

from qroute.attention import attend, merge_states, splice
from qroute.attention.states import AttentionState
from qroute.calibration.fit import nonneg_lstsq, rate, robust_median
from qroute.cost.profile import (
    AttentionCoeffs, Compute, GatherCoeffs, MergeCoeffs, PathSpec, Profile, ReprefillCoeffs, SpliceCoeffs,
)  # fmt: skip
from qroute.geometry import Geometry
from qroute.model import MLATransformer
from qroute.runtime import transport
from qroute.runtime.holder import FETCH, ROUTE, AttentionSpec, route_states
from qroute.runtime.store import BlockStore

PATH = "gloo-loopback"


def route_exchange(holder: int, q: torch.Tensor, blocks: list[int]) -> float:
    """One ROUTE round trip as the executor does it; returns its network time (RTT - holder compute)."""
    t0 = time.perf_counter()
    groups = torch.tensor([(i, 1000, len(blocks)) for i in range(q.shape[0])], dtype=torch.long)
    ids = torch.tensor(blocks * q.shape[0], dtype=torch.long)
    works = transport.isend(holder, ROUTE, [0], [q.contiguous(), groups, ids])
    msg = transport.recv(holder)
    transport.wait_all(works)
    return time.perf_counter() - t0 - msg.meta[0] / 1e9


def fetch_exchange(holder: int, blocks: list[int]) -> float:
    """One FETCH round trip; returns its network time (RTT - holder gather)."""
    t0 = time.perf_counter()
    works = transport.isend(holder, FETCH, [], [torch.tensor(blocks)])
    msg = transport.recv(holder)
    transport.wait_all(works)
    return time.perf_counter() - t0 - msg.meta[0] / 1e9


def _report(grid, times, fit) -> dict:
    return {"grid": [list(x) if isinstance(x, tuple) else x for x in grid], "seconds": times,
            "median_ape": fit.median_ape, "max_ape": fit.max_ape}  # fmt: skip


class QuickCalibration:
    """Fits every constant of a profile for `model` on this instance (and its path to one holder)."""

    def __init__(self, model: MLATransformer, geometry: Geometry, block_size: int, kv_dtype: str, reps: int = 9) -> None:
        self.model, self.g, self.block_size, self.reps = model, geometry, block_size, reps
        row_dtype = "fp32" if model.dtype == torch.float32 else "bf16"
        self.coef = geometry.coefficients(kv_dtype, row_dtype)
        self.filler = torch.randint(0, model.config.vocab_size, (4,))
        self.fits: dict = {}

    def _rand(self, *shape) -> torch.Tensor:
        return torch.randn(*shape).to(self.model.dtype)

    def sample(self, fn: Callable[[], object], reps: int | None = None, back_to_back: bool = False) -> list[float]:
        """Seconds of `fn()` per call, a model forward before each unless `back_to_back` (warm-up calls dropped).

        The merge runs back to back: in the executor it directly follows the attention on the same data.
        """
        out = []
        for _ in range((reps or self.reps) + 2):
            if not back_to_back:
                self.model.prefill(self.filler)
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out[2:]

    def _fit(self, name: str, grid, rows, times):
        fit = nonneg_lstsq(np.array(rows), np.array(times))
        self.fits[name] = _report(grid, times, fit)
        return fit.coef

    def path(self, holder: int, held: list[int], reps: int = 15) -> PathSpec:
        """alpha + bytes/beta from ROUTE exchanges of 1..8 tokens and FETCH of 4..64 blocks."""
        c = self.model.config
        grid, rows, times = [], [], []
        for tokens in (1, 2, 4, 8):
            q = self._rand(tokens, c.num_heads, c.latent_width)
            samples = self._exchanges(lambda q=q: route_exchange(holder, q, held[:4]), reps)
            grid.append(("route", tokens))
            rows.append([1.0, tokens * c.num_heads * (self.coef.q_row_bytes + self.coef.o_row_bytes)])
            times.append(robust_median(samples))
        for n in (4, 16, 64):
            samples = self._exchanges(lambda n=n: fetch_exchange(holder, held[:n]), reps)
            grid.append(("fetch", n))
            rows.append([1.0, n * self.block_size * c.num_layers * self.coef.kv_token_layer_bytes])
            times.append(robust_median(samples))
        alpha, inv_beta = self._fit("path", grid, rows, times)
        return PathSpec(float(alpha), rate(inv_beta), f"measured: ROUTE and FETCH exchanges with rank {holder}")

    def _exchanges(self, exchange: Callable[[], float], reps: int) -> list[float]:
        out = []
        for _ in range(reps + 2):
            self.model.prefill(self.filler)
            out.append(exchange())
        return out[2:]

    def attention(self) -> AttentionCoeffs:
        """What a holder runs per routed request: shift the rows, read the blocks, attend (`route_states`)."""
        c, bs = self.model.config, self.block_size
        store = BlockStore(range(128), c.num_layers, bs, c.latent_width, self.model.dtype)
        store.kv.copy_(self._rand(*store.kv.shape))
        spec = AttentionSpec.of(self.model)
        grid = [(r, t) for r in (self.g.heads, 4 * self.g.heads) for t in (4 * bs, 16 * bs, 64 * bs)]
        rows, times = [], []
        for r, t in grid:
            q, blocks = self._rand(1, r, c.latent_width), torch.randperm(128)[: t // bs]
            groups = torch.tensor([(0, 1000, blocks.numel())])
            times.append(robust_median(self.sample(lambda q=q, b=blocks, g_=groups: route_states(store, spec, 0, q, g_, b))))
            rows.append([1.0, t * self.coef.kv_token_layer_bytes, r * t * self.g.attn_flops_per_row_token])
        fixed, inv_read, inv_flops = self._fit("attention", grid, rows, times)
        return AttentionCoeffs(float(fixed), rate(inv_read), rate(inv_flops), "measured: route_states (shift, read, attend)")

    def local_attention(self) -> AttentionCoeffs:
        """The requester's attention over moved KV (rows of one request against contiguous keys)."""
        c = self.model.config
        grid = [(r, t) for r in (self.g.heads, 4 * self.g.heads) for t in (64, 256, 1024)]
        rows, times = [], []
        latent = c.kv_lora_rank
        for r, t in grid:
            q, keys = self._rand(r, c.latent_width), self._rand(t, c.latent_width)
            times.append(robust_median(self.sample(lambda q=q, k=keys: attend(q, k, k[:, :latent], 0.1, check=False))))
            rows.append([1.0, t * self.coef.kv_token_layer_bytes, r * t * self.g.attn_flops_per_row_token])
        fixed, inv_read, inv_flops = self._fit("local_attention", grid, rows, times)
        return AttentionCoeffs(float(fixed), rate(inv_read), rate(inv_flops), "measured: attend over contiguous keys")

    def merge(self) -> MergeCoeffs:
        """The requester's per-request merge as the executor runs it (merge_states, then stacking)."""
        grid = [(r, p) for r in (self.g.heads, 8 * self.g.heads) for p in (2, 3, 5)]
        rows, times = [], []
        for r, p in grid:
            states = [AttentionState(self._rand(r, self.g.v_dim), torch.randn(r)) for _ in range(p)]

            def run(states=states):
                merged = [merge_states(states, check=False)]
                return torch.stack([m.o for m in merged]), torch.stack([m.lse for m in merged])

            times.append(robust_median(self.sample(run, back_to_back=True)))
            rows.append([1.0, r * p * self.coef.o_row_bytes])
        fixed, inv = self._fit("merge", grid, rows, times)
        return MergeCoeffs(float(fixed), rate(inv), "measured: merge_states")

    def splice(self) -> SpliceCoeffs:
        c = self.model.config
        grid = [(t, c.num_layers) for t in (64, 256, 1024)]
        rows, times = [], []
        for t, layers in grid:
            kv = self._rand(layers, t, c.qk_rope_head_dim)
            times.append(robust_median(self.sample(lambda kv=kv: splice(kv, 1000, c.rope))))
            rows.append([1.0, t * layers])
        fixed, per = self._fit("splice", grid, rows, times)
        return SpliceCoeffs(float(fixed), 0.0, float(per), "measured: one fused splice over all layers")

    def gather(self) -> GatherCoeffs:
        c = self.model.config
        store = self._rand(c.num_layers, 256, self.block_size, c.latent_width)
        grid = [4, 16, 64]
        rows, times = [], []
        for n in grid:
            ids = torch.randperm(256)[:n]
            times.append(robust_median(self.sample(lambda ids=ids: store.index_select(1, ids).reshape(c.num_layers, -1, c.latent_width))))
            rows.append([1.0, n * self.block_size * c.num_layers])
        fixed, per = self._fit("gather", grid, rows, times)
        return GatherCoeffs(float(fixed), 0.0, float(per), "measured: index_select of scattered blocks")

    def reprefill(self) -> ReprefillCoeffs:
        g, vocab = self.g, self.model.config.vocab_size
        grid = [16, 64, 128, 256]
        rows, times = [], []
        for t in grid:
            tokens = torch.randint(0, vocab, (t,))
            times.append(robust_median(self.sample(lambda tok=tokens: self.model.reprefill(tok, torch.arange(tok.numel())), 5)))
            rows.append([1.0, g.layers * t * g.dense_flops_per_token_layer, g.layers * t * (t + 1) / 2 * g.attn_flops_per_token_pair])
        fixed, inv_dense, inv_attn = self._fit("reprefill", grid, rows, times)
        return ReprefillCoeffs(float(fixed), rate(inv_dense), rate(inv_attn), "measured: model.reprefill")

    def profile(self, holder: int | None, held: list[int]) -> Profile:
        """Every constant, as a measured profile (a single instance has a free, infinitely fast path)."""
        path = self.path(holder, held) if holder is not None else PathSpec(0.0, 1e18, "single instance: no fabric")
        compute = Compute(self.attention(), self.local_attention(), self.merge(), self.splice(), self.gather(), self.reprefill())
        return Profile(
            name=f"auto-{socket.gethostname()}", provenance="measured",
            description="quick calibration on the live embedded cluster (qroute demo --profile auto)",
            paths={PATH: path}, default_paths=(PATH,), compute=compute,
            machine={"host": socket.gethostname(), "platform": platform.platform(), "threads": torch.get_num_threads()},
            created=dt.datetime.now(dt.timezone.utc).isoformat(), fits=self.fits,
        )  # fmt: skip


def quick_profile(model: MLATransformer, geometry: Geometry, holder: int | None, held: list[int], block_size: int,
                  kv_dtype: str = "fp32") -> Profile:  # fmt: skip
    """Measure every constant the cost model needs, on this instance and its path to `holder` (holding `held`)."""
    return QuickCalibration(model, geometry, block_size, kv_dtype).profile(holder, held)
