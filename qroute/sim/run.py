"""`simulate(config)`: one workload on one simulated cluster, once per policy; the `bench-agents` measurements.

Everything is checked before the first event (`prepare`): the profile and model, the topology's
paths against the profile, roles and placement, and every request's blocks against the layout.
Requests are dealt as `bench_agents` deals them (agent `a` to requester `a mod R`, each requester in
arrival order), and every policy starts from a fresh cluster, cache and policy state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from qroute.cost import CostModel, Profile, load_profile
from qroute.errors import QrouteError, non_negative_int, positive_int, require
from qroute.geometry import resolve
from qroute.policies import POLICIES, check_policies
from qroute.sim.engine import Engine
from qroute.sim.topology import Layout, Topology, place
from qroute.sim.workload import SimRequest, SimWorkload, synthetic


@dataclass(frozen=True)
class SimConfig:
    """A simulation: cluster (`topology`, `requesters`, `placement` + `replicas`), constants (`profile`,
    `model`), workload (synthetic `workload`, or `requests` on `layout`), serving (`concurrency`,
    `cache_blocks`, `paced`: admit a request only once it has arrived; the runtime does not pace) and
    what the cost model does not price (`base_step_s`: a batch step's own forward pass; the task's
    prefill, priced as a re-prefill when `price_task_prefill`)."""

    topology: Topology = field(default_factory=lambda: Topology(nodes=2, gpus_per_node=4))
    requesters: int = 2
    profile: str | Profile = "published-h100"
    model: str = "deepseek-v2-lite"
    policies: tuple[str, ...] = ("always-route", "always-fetch", "predicate")
    workload: SimWorkload = field(default_factory=SimWorkload)
    requests: tuple[SimRequest, ...] | None = None
    layout: Layout | None = None
    concurrency: int = 4
    cache_blocks: int = 256
    placement: str = "contiguous"
    replicas: int = 0
    kv_dtype: str = "bf16"
    row_dtype: str = "bf16"  # of the routed rows and returned states (the runtime's model dtype)
    base_step_s: float = 0.0
    price_task_prefill: bool = True
    paced: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", check_policies(tuple(self.policies)))
        positive_int("concurrency", self.concurrency)
        positive_int("cache blocks", self.cache_blocks)
        non_negative_int("replicas", self.replicas)
        require(isinstance(self.base_step_s, (int, float)) and self.base_step_s >= 0,
                f"base step seconds={self.base_step_s!r}: expected a number >= 0")  # fmt: skip
        if self.requests is not None:
            require(self.layout is not None, "requests given without a layout: expected the layout they select from")
            object.__setattr__(self, "requests", tuple(self.requests))


@dataclass(frozen=True)
class Prepared:
    """A checked configuration, ready to run: the cost model, placement and each requester's queue."""

    config: SimConfig
    model: CostModel
    layout: Layout
    copies: list
    requesters: tuple[int, ...]
    holders: tuple[int, ...]
    queues: tuple[tuple[SimRequest, ...], ...]

    def engine(self, policy: str) -> Engine:
        c = self.config
        return Engine(self.model, c.topology, self.copies, self.layout, self.requesters, self.queues, policy,
                      c.concurrency, c.cache_blocks, c.base_step_s, c.price_task_prefill, c.paced)  # fmt: skip


def prepare(config: SimConfig) -> Prepared:
    """Check everything and build what the engines share; a QrouteError before any event otherwise."""
    profile = config.profile if isinstance(config.profile, Profile) else load_profile(config.profile)
    config.topology.check(profile)
    model = CostModel(resolve(config.model), profile, kv_dtype=config.kv_dtype, row_dtype=config.row_dtype)
    requesters, holders = config.topology.roles(config.requesters)
    if config.requests is not None:
        layout, requests = config.layout, list(config.requests)
    else:
        layout, requests = synthetic(config.workload)
    require(len(requests) > 0, "workload has no requests: expected one or more")
    _check_blocks(requests, layout)
    copies = place(layout, holders, config.placement, config.replicas)
    queues: list[list[SimRequest]] = [[] for _ in requesters]
    for r in requests:
        queues[r.agent % len(requesters)].append(r)
    return Prepared(config, model, layout, copies, requesters, holders, tuple(map(tuple, queues)))


def simulate(config: SimConfig) -> dict:
    """Per policy: throughput (tokens / s of the slowest requester), mean / p50 / p99 step latency, bytes per
    primitive, choices, cache hits, holder and port utilisation, and the run's own wall time."""
    prepared = prepare(config)
    total = sum(r.steps for q in prepared.queues for r in q)
    out = {"profile": prepared.model.profile.name, "model": prepared.model.geometry.name,
           "instances": config.topology.instances, "requesters": len(prepared.requesters),
           "holders": len(prepared.holders), "requests": sum(map(len, prepared.queues)), "session_steps": total,
           "policies": {}}  # fmt: skip
    bar = _progress(config.progress)
    with bar or _Null():
        for name in config.policies:
            task = bar.add_task(name, total=total) if bar else None
            tick = (lambda n, task=task: bar.update(task, completed=n)) if bar else None
            t0 = time.perf_counter()
            raw = prepared.engine(name).run(tick)
            out["policies"][name] = summarise(raw, time.perf_counter() - t0)
    return out


def summarise(raw: dict, wall_s: float) -> dict:
    """The JSON form of one engine's measurements."""
    lat, makespan = raw["latency"], raw["makespan_s"]
    util = raw["holder_utilisation"]
    return {
        "throughput": raw["tokens"] / makespan if makespan > 0 else 0.0, "makespan_s": makespan,
        "tokens": raw["tokens"], "session_steps": raw["session_steps"], "batch_steps": raw["batch_steps"],
        "mean_s": lat.mean, "p50_s": lat.percentile(50), "p99_s": lat.percentile(99), "max_s": lat.max,
        "latency_cdf": lat.cdf(), "bytes": raw["bytes"], "choices": raw["choices"], "cache": raw["cache"],
        "cache_hit_rate": (raw["cache"] or {}).get("hit_rate"),
        "holder_utilisation": {str(h): u for h, u in util.items()},
        "holder_utilisation_max": max(util.values(), default=0.0),
        "port_utilisation": {f"{i}:{p}": u for (i, p), u in raw["port_utilisation"].items()},
        "wall_s": wall_s,
    }  # fmt: skip


def _check_blocks(requests: list[SimRequest], layout: Layout) -> None:
    n, chunks = layout.num_blocks, len(layout.first)
    for r in requests:
        if not 0 <= r.chunk < chunks:
            raise QrouteError(f"request of agent {r.agent}: chunk {r.chunk}: expected 0 <= chunk < {chunks}")
        lo, hi = layout.first[r.chunk], layout.first[r.chunk] + layout.blocks[r.chunk]
        if not r.blocks or min(r.blocks) < lo or max(r.blocks) >= hi:
            raise QrouteError(f"request of agent {r.agent}: blocks {list(r.blocks)[:8]}: expected ids of chunk "
                              f"{r.chunk}, in [{lo}, {hi}) (the layout has {n} blocks)")  # fmt: skip
        positive_int("decode steps", r.steps)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)  # fmt: skip


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


__all__ = ["POLICIES", "Prepared", "SimConfig", "prepare", "simulate", "summarise"]
