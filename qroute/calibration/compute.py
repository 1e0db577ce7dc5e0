"""Microbenchmarks of what the runtime runs, fitted into a profile's constants.

Run on a requester while the holders serve. It times what the runtime runs, in the state
it runs it: the holder's per-request route compute, the requester's attention over moved
KV, merge, splice, block gather and re-prefill, and (for the quick profile of `qroute
demo`) the route and fetch exchanges with a holder; each fitted by non-negative least
squares on robust medians over a grid (`Grids`: small for `--quick`, larger for `qroute
calibrate`). Between samples the model runs a small forward, as a decode step does
between its layers' round trips: measured here, back-to-back exchanges run twice as fast
as interleaved ones (warm caches and threads), which is not what the runtime sees.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from qroute.attention.states import AttentionState
from qroute.calibration.fit import nonneg_lstsq, rate, robust_median
from qroute.calibration.insitu_parallel import per_holder_excess
from qroute.cost.profile import (
    AttentionCoeffs, Compute, GatherCoeffs, MergeCoeffs, PathSpec, Profile, ReprefillCoeffs, SpliceCoeffs,
)  # fmt: skip
from qroute.geometry import Geometry
from qroute.model import MLATransformer
from qroute.runtime import transport
from qroute.runtime.holder import FETCH, ROUTE, AttentionSpec, landed, route_states
from qroute.runtime.ops import attend_moved, merge_parts, splice_moved_
from qroute.runtime.store import BlockStore

PATH = "gloo-loopback"


def dtype_name(model: MLATransformer) -> str:
    """The cost model's dtype name for `model`'s rows and cache: "fp32" or "bf16"."""
    return "fp32" if model.dtype == torch.float32 else "bf16"


def route_exchange(holder: int, q: torch.Tensor, blocks: list[int], group=None) -> float:
    """One ROUTE round trip as the executor does it, over `group` (a path; None: the world group); returns its
    network time (RTT - holder compute)."""
    (record,) = parallel_route_exchange([(holder, q, blocks)], group=group)
    return record["rtt_s"] - record["holder_compute_s"]


def parallel_route_exchange(targets: list[tuple[int, torch.Tensor, list[int]]], block_size: int = 0,
                            group=None) -> list[dict]:  # fmt: skip
    """One ROUTE exchange with one or several holders at once, each `(holder, q, blocks)`, as a batch does it:
    every message posted, then every reply taken. One trace record per holder, in the form
    `insitu_parallel.per_holder_excess` reads (the caller numbers the exchange with `step`)."""
    t0 = time.perf_counter()
    works, sent = [], []
    for holder, q, blocks in targets:
        groups = torch.tensor([(0, q.shape[0], 1000, len(blocks))], dtype=torch.long)
        works += transport.isend(holder, ROUTE, [0], [q.contiguous(), groups, torch.tensor(blocks, dtype=torch.long)], group)
        sent.append((q, len(blocks)))
    replies = [transport.recv(holder, group) for holder, _, _ in targets]
    transport.wait_all(works)
    for msg in replies:
        landed(msg)
    wall = time.perf_counter() - t0
    return [{"kind": "route", "parallel": len(targets), "first_step": False, "layer": 0, "rtt_s": wall,
             "holder_compute_s": msg.meta[0] / 1e9, "payload_out": q.numel() * q.element_size(), "payload_back": msg.nbytes,
             "groups": [[q.shape[0] * q.shape[1], n * block_size]]} for (q, n), msg in zip(sent, replies)]  # fmt: skip


def fetch_exchange(holder: int, blocks: list[int], group=None) -> float:
    """One FETCH round trip over `group`; returns its network time (RTT - holder gather)."""
    t0 = time.perf_counter()
    works = transport.isend(holder, FETCH, [], [torch.tensor(blocks)], group)
    msg = transport.recv(holder, group)
    transport.wait_all(works)
    landed(msg)
    return time.perf_counter() - t0 - msg.meta[0] / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _report(grid, times, fit) -> dict:
    return {"grid": [list(x) if isinstance(x, tuple) else x for x in grid], "seconds": times,
            "median_ape": fit.median_ape, "max_ape": fit.max_ape}  # fmt: skip


@dataclass(frozen=True)
class Grids:
    """Where each compute coefficient is sampled (multipliers of the head count for rows)."""

    reps: int = 9
    row_heads: tuple[int, ...] = (1, 4)
    route_blocks: tuple[int, ...] = (4, 16, 64)
    local_tokens: tuple[int, ...] = (64, 256, 1024)
    merge_row_heads: tuple[int, ...] = (1, 8)
    merge_partials: tuple[int, ...] = (2, 3, 5)
    splice_tokens: tuple[int, ...] = (64, 256, 1024)
    splice_layers: tuple[int, ...] = (0,)  # 0: the model's layer count
    gather_blocks: tuple[int, ...] = (4, 16, 64)
    gather_holders: tuple[int, ...] = (1,)
    reprefill_tokens: tuple[int, ...] = (16, 64, 128, 256)
    reprefill_reps: int = 5


FULL = Grids(
    reps=15, row_heads=(1, 2, 4, 8), route_blocks=(4, 16, 64, 128), local_tokens=(64, 256, 1024, 2048),
    merge_row_heads=(1, 4, 16), merge_partials=(2, 3, 5, 9), splice_tokens=(64, 256, 1024, 4096),
    splice_layers=(1, 2, 4, 8), gather_blocks=(4, 16, 64, 128), gather_holders=(1, 2, 4),
    reprefill_tokens=(16, 64, 128, 256, 512), reprefill_reps=7,
)  # fmt: skip


class QuickCalibration:
    """Fits every constant of a profile for `model` on this instance (and its path to one holder)."""

    def __init__(self, model: MLATransformer, geometry: Geometry, block_size: int, kv_dtype: str,
                 grids: Grids = Grids(), on_step: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.model, self.g, self.block_size, self.grids = model, geometry, block_size, grids
        self.reps = grids.reps
        self.on_step = on_step or (lambda name: None)
        self.coef = geometry.coefficients(kv_dtype, dtype_name(model))
        self.filler = torch.randint(0, model.config.vocab_size, (4,))
        self.fits: dict = {}
        self.device = model.device  # every operand on the model's device (a GPU under NCCL), timed to completion

    def _rand(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, device=self.device).to(self.model.dtype)

    def sample(self, fn: Callable[[], object], reps: int | None = None) -> list[float]:
        """Seconds of `fn()` per call, a model forward before each (as in serving, where other work comes between
        calls and leaves the caches cold), timed to completion on the device; the first two calls are dropped."""
        out = []
        for _ in range((reps or self.reps) + 2):
            self.model.prefill(self.filler)
            _sync(self.device)
            t0 = time.perf_counter()
            fn()
            _sync(self.device)
            out.append(time.perf_counter() - t0)
        return out[2:]

    def _fit(self, name: str, grid, rows, times):
        fit = nonneg_lstsq(np.array(rows), np.array(times))
        self.fits[name] = _report(grid, times, fit)
        self.on_step(name)
        return fit.coef

    def _fit_three(self, name: str, grid, rows, times, middle: bool) -> tuple[float, float, float]:
        """Fit `[1, middle term, last term]`; without variation in the middle term it is not identifiable: 0."""
        if middle:
            return tuple(float(c) for c in self._fit(name, grid, rows, times))
        fixed, last = self._fit(name, grid, [[r[0], r[2]] for r in rows], times)
        return float(fixed), 0.0, float(last)

    def path(self, holder: int, held: list[int], reps: int = 15, group=None) -> PathSpec:
        """alpha + bytes/beta from ROUTE exchanges of 1..8 tokens and FETCH of 4..64 blocks, over `group`."""
        c = self.model.config
        grid, rows, times = [], [], []
        for tokens in (1, 2, 4, 8):
            q = self._rand(tokens, c.num_heads, c.latent_width)
            samples = self._exchanges(lambda q=q: route_exchange(holder, q, held[:4], group), reps)
            grid.append(("route", tokens))
            rows.append([1.0, tokens * c.num_heads * (self.coef.q_row_bytes + self.coef.o_row_bytes)])
            times.append(robust_median(samples))
        for n in (4, 16, 64):
            samples = self._exchanges(lambda n=n: fetch_exchange(holder, held[:n], group), reps)
            grid.append(("fetch", n))
            rows.append([1.0, n * self.block_size * c.num_layers * self.coef.kv_token_layer_bytes])
            times.append(robust_median(samples))
        alpha, inv_beta = self._fit("path", grid, rows, times)
        return PathSpec(float(alpha), rate(inv_beta), f"measured: ROUTE and FETCH exchanges with rank {holder}")

    def parallel(self, name: str, spec: PathSpec, targets: list[tuple[int, list[int]]], reps: int = 15,
                 group=None) -> PathSpec:  # fmt: skip
        """Path `name`'s `spec` with its per-holder terms (`per_holder_s`, `holder_serial`): ROUTE exchanges with
        two holders at once, over a small and a large chunk (the holders' compute varies), fitted as calibration
        fits its parallel exchanges (of one row each: `bytes_serial` stays 1)."""
        c = self.model.config
        q = self._rand(1, c.num_heads, c.latent_width)
        trace: list[dict] = []
        for n in (4, 32):
            for i in range(reps + 2):
                self.model.prefill(self.filler)
                _sync(self.device)
                records = parallel_route_exchange([(h, q, held[:n]) for h, held in targets], self.block_size, group)
                if i >= 2:  # warm-up exchanges dropped
                    trace += [{**r, "step": len(trace)} for r in records]
        report: dict = {}
        per_holder, serial, ports, cap = per_holder_excess(trace, spec, report) or (0.0, 0.0, 1.0, None)
        self.fits.setdefault("parallel", {})[name] = report
        self.on_step("parallel")
        return replace(spec, per_holder_s=per_holder, holder_serial=serial, bytes_serial=ports, serial_cap_s=cap)

    def _exchanges(self, exchange: Callable[[], float], reps: int) -> list[float]:
        out = []
        for _ in range(reps + 2):
            self.model.prefill(self.filler)
            _sync(self.device)
            out.append(exchange())
        return out[2:]

    def attention(self) -> AttentionCoeffs:
        """What a holder runs per routed request: shift the rows, read the blocks, attend (`route_states`)."""
        c, bs = self.model.config, self.block_size
        most = max(self.grids.route_blocks)
        store = BlockStore(range(most), c.num_layers, bs, c.latent_width, self.model.dtype, self.device)
        store.kv.copy_(self._rand(*store.kv.shape))
        spec = AttentionSpec.of(self.model)
        grid = [(k * self.g.heads, n * bs) for k in self.grids.row_heads for n in self.grids.route_blocks]
        rows, times = [], []
        for r, t in grid:
            q, blocks = self._rand(1, r, c.latent_width), torch.randperm(most)[: t // bs]
            groups = torch.tensor([(0, 1, 1000, blocks.numel())])
            times.append(robust_median(self.sample(lambda q=q, b=blocks, g_=groups: route_states(store, spec, 0, q, g_, b))))
            rows.append([1.0, t * self.coef.kv_token_layer_bytes, r * t * self.g.attn_flops_per_row_token])
        fixed, inv_read, inv_flops = self._fit("attention", grid, rows, times)
        return AttentionCoeffs(float(fixed), rate(inv_read), rate(inv_flops), "measured: route_states (shift, read, attend)")

    def local_attention(self) -> AttentionCoeffs:
        """The requester's attention over moved KV as the executor runs it (`ops.attend_moved`: the sparse MLA
        kernel on a GPU): the rows of k tokens x H heads against t contiguous keys (whole blocks)."""
        c, heads, bs = self.model.config, self.g.heads, self.block_size
        grid = [(k * heads, -(-t // bs) * bs) for k in self.grids.row_heads for t in self.grids.local_tokens]
        rows, times = [], []
        for r, t in grid:
            q, keys = self._rand(r // heads, heads, c.latent_width), self._rand(t, c.latent_width)
            run = lambda q=q, k=keys: attend_moved(q, k, 0.1, c.kv_lora_rank, bs)  # noqa: E731
            times.append(robust_median(self.sample(run)))
            rows.append([1.0, t * self.coef.kv_token_layer_bytes, r * t * self.g.attn_flops_per_row_token])
        fixed, inv_read, inv_flops = self._fit("local_attention", grid, rows, times)
        return AttentionCoeffs(float(fixed), rate(inv_read), rate(inv_flops), "measured: attention over moved KV")

    def merge(self) -> MergeCoeffs:
        """A request's per-layer merge as `BatchContext` runs it (`ops.merge_parts`: the merge kernel on a GPU): P
        partial states of k x H rows, merged, reshaped."""
        heads, latent = self.g.heads, self.g.v_dim
        grid = [(k * heads, p) for k in self.grids.merge_row_heads for p in self.grids.merge_partials]
        rows, times = [], []
        for r, p in grid:
            states = [AttentionState(self._rand(r, latent), torch.randn(r, device=self.device)) for _ in range(p)]

            def run(states=states):
                m = merge_parts(states)
                return m.o.view(-1, heads, latent), m.lse.view(-1, heads)

            times.append(robust_median(self.sample(run)))
            rows.append([1.0, r * p * self.coef.o_row_bytes])
        fixed, inv = self._fit("merge", grid, rows, times)
        return MergeCoeffs(float(fixed), rate(inv), "measured: the merge as the executor runs it")

    def splice(self) -> SpliceCoeffs:
        """One splice call over all layers of the moved tokens as the executor runs it (`ops.splice_moved_`: one
        kernel launch on a GPU): `fixed + L per_layer + T L per_token_layer`."""
        c = self.model.config
        layer_counts = [n or c.num_layers for n in self.grids.splice_layers]
        grid = [(t, n) for t in self.grids.splice_tokens for n in layer_counts]
        rows, times = [], []
        for t, layers in grid:
            kv = self._rand(layers, t, c.latent_width)
            times.append(robust_median(self.sample(lambda kv=kv: splice_moved_(kv, 1000, c.rope, c.kv_lora_rank))))
            rows.append([1.0, layers, t * layers])
        fixed, per_layer, per = self._fit_three("splice", grid, rows, times, len(set(layer_counts)) > 1)
        return SpliceCoeffs(fixed, per_layer, per, "measured: one fused splice over all layers")

    def gather(self) -> GatherCoeffs:
        """Scattered blocks from H holders, one gather call per holder (as each holder answers its FETCH)."""
        c = self.model.config
        store = self._rand(c.num_layers, 256, self.block_size, c.latent_width)
        grid = [(n, h) for n in self.grids.gather_blocks for h in self.grids.gather_holders]
        rows, times = [], []
        for n, h in grid:
            ids = [torch.randperm(256, device=self.device)[: max(1, n // h)] for _ in range(h)]

            def run(ids=ids):
                return [store.index_select(1, i).reshape(c.num_layers, -1, c.latent_width) for i in ids]

            times.append(robust_median(self.sample(run)))
            rows.append([1.0, h * c.num_layers, sum(i.numel() for i in ids) * self.block_size * c.num_layers])
        fixed, per_holder_layer, per = self._fit_three("gather", grid, rows, times, len(self.grids.gather_holders) > 1)
        return GatherCoeffs(fixed, per_holder_layer, per, "measured: index_select of scattered blocks, per holder")

    def reprefill(self) -> ReprefillCoeffs:
        g, vocab = self.g, self.model.config.vocab_size
        grid = list(self.grids.reprefill_tokens)
        rows, times = [], []
        for t in grid:
            tokens = torch.randint(0, vocab, (t,))
            run = lambda tok=tokens: self.model.reprefill(tok, torch.arange(tok.numel()))  # noqa: E731
            times.append(robust_median(self.sample(run, self.grids.reprefill_reps)))
            rows.append([1.0, g.layers * t * g.dense_flops_per_token_layer, g.layers * t * (t + 1) / 2 * g.attn_flops_per_token_pair])
        fixed, inv_dense, inv_attn = self._fit("reprefill", grid, rows, times)
        return ReprefillCoeffs(float(fixed), rate(inv_dense), rate(inv_attn), "measured: model.reprefill")

    def compute(self) -> Compute:
        return Compute(self.attention(), self.local_attention(), self.merge(), self.splice(), self.gather(), self.reprefill())

    def profile(self, holder: int | None, held: list[int], other: tuple[int, list[int]] | None = None) -> Profile:
        """Every constant, as a measured profile: each opened path (`runtime.paths`; else the world group's)
        measured to `holder` (a single instance has a free, infinitely fast path); with `other` (a second holder
        and its blocks), each path's per-holder terms from exchanges with both at once."""
        from qroute.runtime import paths

        if holder is None:
            specs = {PATH: PathSpec(0.0, 1e18, "single instance: no fabric")}
        else:
            specs = {name: self.path(holder, held, group=paths.group(name)) for name in paths.names() or [paths.world_path()]}
        if holder is not None and other is not None:
            both = [(holder, held), other]
            specs = {name: self.parallel(name, spec, both, group=paths.group(name)) for name, spec in specs.items()}
        compute = self.compute()
        return Profile(
            name=f"auto-{socket.gethostname()}", provenance="measured",
            description="quick calibration on the live embedded cluster (qroute demo --profile auto)",
            paths=specs, default_paths=tuple(specs), compute=compute,
            machine={"host": socket.gethostname(), "platform": platform.platform(), "threads": torch.get_num_threads()},
            created=dt.datetime.now(dt.timezone.utc).isoformat(), fits=self.fits,
        )  # fmt: skip


def quick_profile(model: MLATransformer, geometry: Geometry, holder: int | None, held: list[int], block_size: int,
                  kv_dtype: str = "fp32", other: tuple[int, list[int]] | None = None) -> Profile:  # fmt: skip
    """Measure every constant the cost model needs, on this instance and its path to `holder` (holding `held`), and
    with `other` (a second holder, its blocks) what asking both at once adds."""
    return QuickCalibration(model, geometry, block_size, kv_dtype).profile(holder, held, other)
