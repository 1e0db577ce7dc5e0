"""`qroute bench-agents`: an agentic workload on the real runtime, once per planning policy.

Many sub-agents (`workload.generator`, or a recorded JSONL trace) query one shared corpus
placed over the holders. Each requester serves its agents' requests (agent `a` goes to
requester `a mod R`) in arrival order, with up to `concurrency` sessions decoding together
(continuous batching: a session joins when a slot frees, leaves after its last step;
arrival times order the requests but do not pace them). Every policy (`qroute.policies`)
serves the same requests from a fresh executor (and, for `reuse` and `load`, a fresh block
cache); the requesters start each policy together, so holders see all of them at once.

Measured per policy: throughput (decoded tokens per second of the slowest requester), the
latency of every session-step (time since the session's previous step ended, or since its
admission: its own fetch or re-prefill and other sessions' opens included), bytes moved
per primitive, cache hits, each holder's utilisation (its compute time over the wall
time) and exactness spot checks against the single-instance reference.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from statistics import mean

import numpy as np
import torch
import torch.distributed as dist

from qroute.calibration.auto import cluster_profile
from qroute.calibration.shapes import forced_executor, warm_up
from qroute.cost import CostModel, load_profile
from qroute.errors import QrouteError, non_negative_int, positive_int
from qroute.indexer import BlockIndexer
from qroute.policies import POLICIES, check_policies
from qroute.runtime.cache import BlockCache
from qroute.runtime.control import stop_holders
from qroute.runtime.executor import Executor, Session
from qroute.runtime.holder import AttentionSpec, build_store, serve
from qroute.runtime.launcher import ClusterSpec, Instance, launch
from qroute.runtime.reference import reference_logits, relative_error
from qroute.runtime.world import WorldSpec, build_world, check_spec
from qroute.workload import skew
from qroute.workload.corpus import CorpusSpec
from qroute.workload.generator import AgentWorkloadSpec, TimedRequest, make_workload
from qroute.workload.trace import read_trace, trace_header, write_trace

EXACT_TOL = {"float32": 1e-4, "bfloat16": 3e-2}
MODE = {"always-route": "route", "always-fetch": "fetch", "predicate": "predicate", "reuse": "reuse", "load": "load"}


@dataclass(frozen=True)
class AgentBenchConfig:
    cluster: ClusterSpec = field(default_factory=lambda: ClusterSpec(3, 1))
    world: WorldSpec = field(default_factory=lambda: WorldSpec(corpus=CorpusSpec(max_tokens=8192, chunk_blocks=8)))
    workload: AgentWorkloadSpec = field(default_factory=AgentWorkloadSpec)
    policies: tuple[str, ...] = POLICIES
    trace: str | None = None  # replay this JSONL trace instead of generating
    record: str | None = None  # write the generated workload here (rank 0)
    concurrency: int = 4
    cache_blocks: int = 128
    check_every: int = 4  # exactness spot check of every k-th request of each requester (0: none)
    repeats: int = 1  # rounds over the policies (interleaved, so drift hits every policy alike)
    profile: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check_policies(self.policies)
        positive_int("concurrency", self.concurrency)
        positive_int("repeats", self.repeats)
        positive_int("cache blocks", self.cache_blocks)
        non_negative_int("check every", self.check_every)
        if self.cluster.world_size - self.cluster.requesters < 1:
            raise QrouteError(f"instances={self.cluster.world_size} with {self.cluster.requesters} requester(s): "
                              "expected at least one holder")  # fmt: skip


def run_bench(config: AgentBenchConfig) -> dict:
    """Launch the cluster, serve the workload once per policy; rank 0's aggregated results."""
    check_spec(config.world)
    if config.profile != "auto":
        load_profile(config.profile)
    t0 = time.perf_counter()
    out = launch(config.cluster, bench_instance, config)[0]
    if out.get("rank") != 0:
        return out
    out["wall_s"] = time.perf_counter() - t0
    return out


def bench_instance(instance: Instance, config: AgentBenchConfig) -> dict:
    torch.manual_seed(config.world.seed)
    world = build_world(config.world, instance.holders)
    requesters = dist.new_group(ranks=instance.requester_ranks) if instance.world_size > 1 else None
    if not instance.is_requester:
        store = build_store(instance.rank, world.corpus, world.directory, world.model)
        dist.barrier()
        stats = serve(store, AttentionSpec.of(world.model), instance.requester_ranks)
        result = {"role": "holder", "rank": instance.rank, "compute_s": stats.compute_s}
    else:
        dist.barrier()
        try:
            result = _requester(instance, config, world, requesters)
        finally:
            stop_holders(instance.rank, instance.holders)
    gathered = [None] * instance.world_size if instance.rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    return aggregate(gathered, config) if instance.rank == 0 else result


def workload(config: AgentBenchConfig, world) -> tuple[list[TimedRequest], list[str]]:
    """The requests (generated, or read from the trace) and the trace's bad lines."""
    if config.trace:
        _, timed, errors = read_trace(config.trace, world.corpus)
        return timed, errors
    timed = make_workload(world.corpus, BlockIndexer(world.corpus, seed=config.world.seed), config.workload)
    return timed, []


def _requester(instance: Instance, config: AgentBenchConfig, world, group) -> dict:
    timed, errors = workload(config, world)
    if config.record and instance.rank == 0 and not config.trace:
        write_trace(config.record, trace_header(world.corpus, asdict(config.workload)), timed)
    index, count = instance.requester_ranks.index(instance.rank), len(instance.requester_ranks)
    mine = [t.request for t in timed if t.agent % count == index]
    warm_up(forced_executor(world, instance.rank), world)  # untimed: the quick calibration and the runs see a warm machine
    cost = CostModel(world.geometry, cluster_profile(config.profile, instance, config.cluster, config.world, world, progress=False))
    runs: dict[str, list[dict]] = {name: [] for name in config.policies}
    for round_ in range(config.repeats):
        for name in config.policies:
            if group is not None:
                dist.barrier(group=group)  # every requester starts the policy together
            check = config if round_ == 0 else replace(config, check_every=0)  # spot checks in the first round
            runs[name].append(serve_policy(instance.rank, world, cost, mine, name, check))
    out = {"role": "requester", "rank": instance.rank, "runs": runs, "trace_errors": errors}
    if instance.rank == 0:
        sels = skew.selections(timed)
        out["workload"] = {"requests": len(timed), "agents": len({t.agent for t in timed}),
                           "skew": skew.summary(sels, world.corpus.num_blocks)}  # fmt: skip
        out["profile"] = cost.profile.name
    return out


def serve_policy(rank: int, world, cost: CostModel, requests: list, policy: str, config: AgentBenchConfig) -> dict:
    """Serve `requests` in order with continuous batching under `policy`; this requester's measurements."""
    ex = Executor(rank, world.model, world.corpus, world.directory, cost)
    if policy in ("reuse", "load"):
        c = world.model.config
        ex.cache = BlockCache(config.cache_blocks, c.num_layers, world.corpus.block_size, c.latent_width,
                              world.model.dtype, world.model.device)  # fmt: skip
    queue, active, finished = deque(requests), [], []
    latencies, last = [], {}
    t_start = time.perf_counter()
    while queue or active:
        while queue and len(active) < config.concurrency:
            admitted = time.perf_counter()
            s = ex.open(queue.popleft(), MODE[policy])
            active.append(s)
            last[id(s)] = admitted
        ex.step(active)
        now = time.perf_counter()
        for s in active:
            latencies.append(now - last[id(s)])
            last[id(s)] = now
        for s in [s for s in active if len(s.inputs) >= s.request.steps]:
            active.remove(s)
            finished.append(s)
    wall = time.perf_counter() - t_start
    return {**_measured(ex, finished, wall, t_start), "latencies": latencies, **_exactness(world, finished, config)}


def _measured(ex: Executor, sessions: list[Session], wall: float, t_start: float) -> dict:
    bytes_, busy, choices = {"route": 0, "fetch": 0}, {}, {"route": 0, "fetch": 0, "local": 0, "cache": 0}
    for r in ex.trace:
        if r["kind"] == "route":
            bytes_["route"] += r["payload_out"] + r["payload_back"]
        elif r["kind"] == "fetch":
            bytes_["fetch"] += r["bytes"]
        if r["kind"] in ("route", "fetch"):
            busy[r["holder"]] = busy.get(r["holder"], 0.0) + r["holder_compute_s"]
    for s in sessions:
        for prim in s.primitives.values():
            choices[prim] += 1
        choices["cache"] += s.cache_hits > 0
    hits = misses = 0
    over_time = []
    for r in ex.trace:
        if r["kind"] == "cache":
            hits, misses = hits + r["hits"], misses + r["misses"]
            over_time.append([r["t"] - t_start, hits / max(hits + misses, 1)])
    return {"wall_s": wall, "tokens": sum(len(t) for s in sessions for t in s.inputs), "requests": len(sessions),
            "base_step_s": mean(ex.base_steps) if ex.base_steps else 0.0,
            "bytes": bytes_, "choices": choices, "busy_s": busy, "hit_rate_over_time": over_time,
            "cache": ex.cache.stats.as_dict(ex.cache.capacity) if ex.cache is not None else None}  # fmt: skip


def _exactness(world, sessions: list[Session], config: AgentBenchConfig) -> dict:
    """Spot checks (every `check_every`-th finished session) against the single-instance reference."""
    errors = []
    if config.check_every:
        for s in sessions[:: config.check_every]:
            want = reference_logits(world.model, world.corpus, s.request, s.inputs)
            errors.append(relative_error(torch.cat(s.logits).cpu(), want.cpu()))
    tol = EXACT_TOL[config.world.dtype]
    return {"checked": len(errors), "max_rel_err": max(errors, default=0.0), "exact": all(e <= tol for e in errors)}


def aggregate(instances: list[dict], config: AgentBenchConfig) -> dict:
    """Rank 0: every requester's runs merged per policy (the schema `report.agents` reads)."""
    reqs = [r for r in instances if r.get("role") == "requester"]
    first = reqs[0]
    policies = {}
    for name in config.policies:
        rounds = [[r["runs"][name][k] for r in reqs] for k in range(config.repeats)]  # per round: every requester
        walls = [max(r["wall_s"] for r in runs) for runs in rounds]
        tokens = sum(r["tokens"] for r in rounds[0])
        rates = [tokens / w if w > 0 else 0.0 for w in walls]
        runs = [r for runs in rounds for r in runs]
        wall = sum(walls)
        lat = [x for r in runs for x in r["latencies"]]
        busy: dict[str, float] = {}
        for r in runs:
            for h, b in r["busy_s"].items():
                busy[str(h)] = busy.get(str(h), 0.0) + b
        policies[name] = {
            "throughput": float(np.median(rates)), "throughput_rounds": rates, "wall_s": wall, "tokens": tokens,
            "requests": sum(r["requests"] for r in rounds[0]),
            "p50_s": float(np.percentile(lat, 50)) if lat else 0.0, "p99_s": float(np.percentile(lat, 99)) if lat else 0.0,
            "mean_s": mean(lat) if lat else 0.0, "step_latencies_s": lat,
            "base_step_s": mean(r["base_step_s"] for r in runs),  # per decode step, beyond what the model prices
            "exact": all(r["exact"] for r in runs), "max_rel_err": max(r["max_rel_err"] for r in runs),
            "checked": sum(r["checked"] for r in runs),
            "bytes": {k: sum(r["bytes"][k] for r in rounds[0]) for k in ("route", "fetch")},
            "choices": {k: sum(r["choices"][k] for r in rounds[0]) for k in rounds[0][0]["choices"]},
            "cache": _merge_cache([r["cache"] for r in rounds[0]]),
            "holder_utilisation": {h: b / wall for h, b in sorted(busy.items())} if wall > 0 else {},
            "hit_rate_over_time": first["runs"][name][0]["hit_rate_over_time"],
        }  # fmt: skip
    return {"rank": 0, "config": _config_dict(config), "machine": _machine(), "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "workload": first["workload"], "profile": first["profile"], "trace_errors": first["trace_errors"],
            "holders": [r for r in instances if r.get("role") == "holder"], "policies": policies}  # fmt: skip


def _merge_cache(stats: list[dict | None]) -> dict | None:
    stats = [s for s in stats if s]
    if not stats:
        return None
    out = {k: sum(s[k] for s in stats) for k in ("hits", "misses", "inserted", "evictions", "refused", "capacity_blocks")}
    seen = out["hits"] + out["misses"]
    return {**out, "hit_rate": out["hits"] / seen if seen else None}


def _config_dict(config: AgentBenchConfig) -> dict:
    d = asdict(config)
    d["policies"] = list(config.policies)
    return d


def _machine() -> dict:
    import platform

    return {"host": socket.gethostname(), "platform": platform.platform(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip
