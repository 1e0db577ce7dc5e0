"""`qroute calibrate`: measure this cluster's constants through the same launcher the runtime uses.

Rank 0 measures; the other instances hold blocks and serve (the runtime's holder loop).
1. The fabric, OSU style: a ping-pong latency sweep and a streaming bandwidth sweep over
   message sizes (tables for people; the ping-pong fit is kept for comparison).
2. In situ (`insitu.py`): rank 0 serves a training grid of requests with each primitive
   forced (rows x chunk sizes; none of them a validation shape), plus scattered fetches,
   one fetch 4x the largest chunk (so the line spans wide enough to fix beta) and, with two
   holders or more, pairs of requests routed to two holders at once,
   `--repeats` times (several paths share the shapes out, the shares rotating repeat by
   repeat, unless `--every-shape`), and fits every constant to the executor's trace: alpha and beta of
   the path (with a small-message regime where one line misses) from the route and fetch
   exchanges, the holder's wake-up (`cold_s`: a request's first step against later ones;
   how it grows with the holder's idle time from route requests after 10-300 ms idle),
   the parallel exchange's extra per holder (`per_holder_s`), the holder's attention, the
   requester's attention, merge, splice, gather and re-prefill.
The profile (schema `qroute.profile/14`) carries machine and fabric metadata, each fit's
residuals and how far alpha and beta moved between repeats.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from qroute.calibration.compute import dtype_name
from qroute.calibration.fit import fit_path, rel_spread, speed_spread
from qroute.calibration.insitu import fit_path_from_trace, path_line
from qroute.calibration.insitu_compute import fit_compute_from_trace
from qroute.calibration.grid import (EVERY_SHAPE, FULL, QUICK, QUICK_CHUNK_BLOCKS, TRAIN_CHUNK_BLOCKS, timed, train_grid,
                                    train_shapes)  # fmt: skip
from qroute.calibration.sweeps import BANDWIDTH_SIZES, LATENCY_SIZES, bandwidth_sweep, latency_sweep
from qroute.cost.model import PRIMITIVES, path_flips
from qroute.cost.profile import Profile
from qroute.errors import QrouteError, positive_int
from qroute.runtime import holder, launcher, paths
from qroute.runtime.control import KeepAlive, stop_holders
from qroute.runtime.holder import AttentionSpec, build_store
from qroute.runtime.launcher import ClusterSpec, Instance, launch
from qroute.runtime.world import WorldSpec, build_world, check_spec
from qroute.workload.corpus import CorpusSpec

QUICK_SIZES = tuple(8 * 4**i for i in range(0, 11, 2))  # 8 B .. 8 MiB, every other size


@dataclass(frozen=True)
class CalibrationConfig:
    cluster: ClusterSpec = field(default_factory=lambda: ClusterSpec(world_size=2))
    world: WorldSpec = field(default_factory=lambda: WorldSpec(corpus=CorpusSpec(max_tokens=8192, chunk_blocks=32)))
    quick: bool = False
    repeats: int = 3
    name: str | None = None
    progress: bool = True
    partial: str | None = None  # where measurements taken so far are written if a sweep fails
    holder_stops_after: int | None = None  # fault injection for tests: the holder exits after this many messages
    device: str | None = None  # the host tier on this device ("auto", "cpu", "cuda"), instead of a launched cluster
    keep_trace: bool = False  # the results carry the raw trace (`trace`: per path, per training run, its records)
    chunk_blocks: tuple[int, ...] | None = None  # the training grid's chunk sizes (None: QUICK_ or TRAIN_CHUNK_BLOCKS)
    every_shape: bool = False  # every path serves every training shape in every repeat, each warming up (`--every-shape`)

    def __post_init__(self) -> None:
        positive_int("repeats", self.repeats)
        if self.cluster.world_size < 2:
            raise QrouteError(f"instances={self.cluster.world_size}: calibration needs 2 or more (a peer to measure)")


def run_calibration(config: CalibrationConfig) -> dict:
    """Launch the cluster, measure on rank 0, return its results (profile dict, sweeps, spread)."""
    check_spec(config.world)
    if config.device is not None:
        from qroute.calibration.host import run_host_calibration

        return run_host_calibration(config)
    t0, started = time.perf_counter(), time.time()
    out = launch(config.cluster, calibrate_instance, config)[0]
    if out.get("rank") == 0:
        out["wall_s"] = time.perf_counter() - t0
        clock = out.pop("clock")  # rank 0's wall clock (one host: the same clock)
        out["phase_s"] = {"launch": clock["entered"] - started, "holders_ready": clock["ready"] - clock["entered"],
                          **out["phase_s"], "stop": started + out["wall_s"] - clock["measured"]}  # fmt: skip
    return out


def calibrate_instance(instance: Instance, config: CalibrationConfig) -> dict:
    entered = time.time()
    world = build_world(config.world, instance.holders)
    if not instance.is_requester:
        store = build_store(instance.rank, world.corpus, world.directory, world.model, timing_only=True)  # one prefill
        dist.barrier()
        holder.serve(store, AttentionSpec.of(world.model), instance.requester_ranks, limit=config.holder_stops_after)
        if config.holder_stops_after is not None:
            os._exit(0)  # a holder gone mid-sweep: its sockets close under the requester
        return {"role": "holder", "rank": instance.rank}
    dist.barrier()
    if instance.rank != 0:
        stop_holders(instance.rank, instance.holders)
        return {"role": "requester", "rank": instance.rank}
    ready = time.time()  # every holder has prefilled its blocks
    result = measure(instance, config, world)
    result["clock"] = {"entered": entered, "ready": ready, "measured": time.time()}
    stop_holders(instance.rank, instance.holders)
    return result


def measure(instance: Instance, config: CalibrationConfig, world) -> dict:
    """Everything `qroute calibrate` measures, on rank 0 while the holders serve: sweeps, training grid, fits (or on
    any requester: `auto.auto_profile`; each requester sweeps its own holder)."""
    peer = instance.holders[instance.rank % len(instance.holders)]
    filler = torch.randint(0, world.model.config.vocab_size, (4,))
    between = lambda: world.model.prefill(filler)  # noqa: E731 - the model's compute between exchanges

    def sweeps(name: str, sizes, latency: dict, bandwidth: dict, advance) -> None:
        group = paths.group(name)
        latency_sweep(peer, sizes, 10 if config.quick else 30, between=between, group=group, on_size=advance,
                      rows=latency.setdefault(name, []))  # fmt: skip
        bandwidth_sweep(peer, BANDWIDTH_SIZES, reps=3 if config.quick else 5, group=group, on_size=advance,
                        rows=bandwidth.setdefault(name, []))  # fmt: skip

    return measure_paths(config, world, paths.names() or [paths.world_path()], peer, sweeps)


def measure_paths(config: CalibrationConfig, world, names: list[str], peer: int, sweeps, links: dict | None = None,
                  fabric: str | None = None, ladder: bool = True) -> dict:  # fmt: skip
    """Per path `sweeps(name, sizes, latency, bandwidth, advance)` (OSU-style tables, filled in place); then the
    training grid served through an executor (holders reached through `links` where given; `ladder`: with the idle
    ladder, `idle_ladder`), `repeats` times, the paths taking turns repeat by repeat; the fits.

    Taking turns, every path's constants are fitted over the whole training, not over a block of it: a machine
    whose speed moves during calibration moves every path alike. Until 2026-11-27 each path trained in one block
    after the other; on the dev VM the holder's speed moved 0.86 -> 0.94 over the first path's block and 0.86 ->
    1.23 over the second's in one such calibration (`python -m benchmarks.drift`, `drift-dev-2core-*`)."""
    from rich.progress import Progress

    sizes = QUICK_SIZES if config.quick else LATENCY_SIZES
    repeats = 1 if config.quick else config.repeats
    blocks = config.chunk_blocks or (QUICK_CHUNK_BLOCKS if config.quick else TRAIN_CHUNK_BLOCKS)
    samples = replace(QUICK if config.quick else FULL, **(EVERY_SHAPE if config.every_shape else {}))
    grid_shapes = train_shapes(blocks)
    shapes = [samples.shares(grid_shapes, names, r) for r in range(repeats)]  # per repeat, each path's share
    latency, bandwidth, traces, probes, seconds = {}, {}, {}, {}, {}
    with Progress(disable=not config.progress, transient=True) as bar:
        steps = sum(len(sizes) + len(BANDWIDTH_SIZES) + sum(len(share[name]) * 2 for share in shapes) for name in names)
        task = bar.add_task("calibrating", total=steps)
        alive = KeepAlive.of(world, config.cluster.timeout_s)
        advance = lambda *_: (bar.advance(task), alive())  # noqa: E731
        for name in names:
            with _kept(config, name, latency, bandwidth), timed(seconds, "sweeps"):
                sweeps(name, sizes, latency, bandwidth, advance)
        for name in names:
            traces[name], probes[name] = [], []
        for r in range(repeats):  # the paths take turns, repeat by repeat, each first every other repeat
            for j, name in enumerate(names if r % 2 == 0 else names[::-1]):
                with _kept(config, name, latency, bandwidth):
                    traces[name].append(train_grid(world, shapes[r][name], advance, seed=r, path=name, probes=probes[name],
                                                   links=links, ladder=ladder, seconds=seconds, samples=samples,
                                                   first=j == 0))  # fmt: skip
    with timed(seconds, "fits"):
        out = _results(config, world, peer, latency, bandwidth, traces, probes, fabric or _fabric(config))
    for name, spread_ in out.get("spread", {}).items():  # each repeat on a share: its spread mixes shapes with repeats
        spread_["shares"] = any(len(share[name]) < len(grid_shapes) for share in shapes)
    return {**out, "phase_s": seconds}


@contextmanager
def _kept(config: CalibrationConfig, name: str, latency: dict, bandwidth: dict):
    """A path that fails here fails the calibration with a one-line error naming it, the sweep rows measured so far
    kept (`_keep_partial`)."""
    try:
        yield
    except (RuntimeError, ConnectionError, OSError) as exc:
        kept = _keep_partial(config, latency, bandwidth)
        raise QrouteError(f"path {name!r} failed mid-sweep ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                          f"measurements taken so far kept in {kept}") from None  # fmt: skip


def _keep_partial(config: CalibrationConfig, latency: dict, bandwidth: dict) -> str:
    """Write the sweep rows measured so far (a failed run keeps what it took)."""
    path = Path(config.partial or f"calibration-partial-{socket.gethostname()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"partial": True, "latency": {n: [r.as_dict() for r in rows] for n, rows in latency.items()},
            "bandwidth": bandwidth, "created": dt.datetime.now(dt.timezone.utc).isoformat()}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n")
    return str(path)


def _results(config, world, peer, latency, bandwidth, traces, probes, fabric: str) -> dict:
    dtype = dtype_name(world.model)
    fits: dict = {"pingpong": {n: fit_path([2 * r.size for r in rows], [r.median_s for r in rows]).report()
                               for n, rows in latency.items()}, "path": {},
                  "speed_probe": {n: {p: float(np.median([x[p] for x in runs])) for p in PRIMITIVES}
                                  for n, runs in probes.items() if runs},
                  "speed_probes": {n: runs for n, runs in probes.items() if runs}}  # before and after each training repeat  # fmt: skip
    specs, spreads = {}, {}
    for name, runs in traces.items():
        pooled = [{**r, "run": i} for i, t in enumerate(runs) for r in t]  # step numbers restart in each run
        sweep = {2 * r.size: r.median_s for r in latency[name]}
        source = f"measured: route and fetch exchanges in situ and a ping-pong sweep, with rank {peer}"
        specs[name], fit = fit_path_from_trace(pooled, source, sweep, paths.chunk_bytes(name))
        fits["path"][name] = [fit.report()]
        spreads[name] = spread([fit_path_from_trace(t, "", sweep, paths.chunk_bytes(name))[1] for t in runs],
                               run_speeds(probes.get(name, []), len(runs)))  # fmt: skip
        spreads[name]["speed_rel_spread"] = speed_spread(probes.get(name, []))
    everything = [r for runs in traces.values() for t in runs for r in t]
    compute = fit_compute_from_trace(everything, world.geometry, world.geometry.coefficients(dtype, dtype), fits)
    profile = _profile(config, world, specs, compute, fits, fabric)
    return {"role": "requester", "rank": 0, "profile": profile.to_dict(),
            "latency": {n: [r.as_dict() for r in rows] for n, rows in latency.items()}, "bandwidth": bandwidth,
            "spread": spreads, "flips": flips(latency, profile), "trace_records": len(everything),
            **({"trace": traces} if config.keep_trace else {})}  # fmt: skip


def flips(latency: dict, profile: Profile) -> list[dict]:
    """For each pair of paths: where the profile says the cheaper path changes, and where the measured sweeps say so."""
    out = []
    names = list(latency)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows_a, rows_b = latency[a], latency[b]
            sizes = [2 * r.size for r in rows_a]
            faster = [ra.median_s < rb.median_s for ra, rb in zip(rows_a, rows_b)]
            measured = [[sizes[k], sizes[k + 1]] for k in range(len(sizes) - 1) if faster[k] != faster[k + 1]]
            out.append({"a": a, "b": b, "predicted_bytes": path_flips(profile.path(a), profile.path(b)),
                        "measured_between_bytes": measured,
                        "measured_winners": [a if f else b for f in faster], "sizes": sizes})  # fmt: skip
    return out


def _fabric(config) -> str:
    if config.cluster.backend == "nccl":
        if config.cluster.symm:
            return "one-sided writes into symmetric memory between GPUs (headers through host memory), one instance per GPU"
        return "NCCL point-to-point between GPUs, one instance per GPU"
    if config.cluster.shm:
        return "gloo (TCP) over loopback and shared memory"
    if not config.cluster.links:
        return "gloo (TCP) over loopback"
    return "; ".join(f"{link.name}: {link.kind}" + (f", tbf {link.rate_mbit} Mbit/s" if link.rate_mbit else "")
                     + (f", +{link.delay_us} us each way" if link.delay_us else "") for link in config.cluster.links)  # fmt: skip



def spread(fits, speeds: list[float] | None = None) -> dict:
    """How far alpha and beta move between repeated calibrations, (max - min) / median; and how far what they predict
    moves, the same over each exchange size the repeats fitted (`time_rel_spread`: the largest over those sizes;
    alpha and beta trade off against each other where the exchanges span a narrow range of sizes). With each
    repeat's `speeds` (its route speed probe's seconds, `run_speeds`), also the predictions' spread with each repeat
    scaled to the repeats' median speed (`time_rel_spread_at_speed`): how far the fits differ beyond the machine's
    own speed moving between repeats."""
    alphas = np.array([f.alpha_s for f in fits])
    betas = np.array([f.beta_Bps for f in fits])
    rel = lambda x: rel_spread(x) or 0.0  # noqa: E731
    sizes = sorted({b for f in fits for b, _ in f.points})
    predicted = np.array([[path_line(f).time(b) for f in fits] for b in sizes]).reshape(len(sizes), len(fits))
    times = [rel(row) for row in predicted]
    out = {"repeats": len(fits), "alpha_s": alphas.tolist(), "beta_Bps": betas.tolist(),
           "alpha_rel_spread": rel(alphas), "beta_rel_spread": rel(betas),
           "time_rel_spread": max(times, default=0.0), "time_sizes": sizes, "time_rel_spreads": times}  # fmt: skip
    if speeds is not None and len(speeds) == len(fits):
        scale = np.median(speeds) / np.array(speeds)
        out["run_speed_s"] = list(speeds)
        out["time_rel_spread_at_speed"] = max((rel(row * scale) for row in predicted), default=0.0)
    return out


def run_speeds(probes: list[dict[str, float]], runs: int) -> list[float] | None:
    """Each training repeat's speed: the mean of its route speed probes' seconds, taken before and after it (None
    unless there are two per repeat)."""
    if len(probes) != 2 * runs:
        return None
    return [float((probes[2 * i]["route"] + probes[2 * i + 1]["route"]) / 2) for i in range(runs)]


def _profile(config, world, specs: dict, compute, fits, fabric: str) -> Profile:
    host = socket.gethostname()
    device = world.model.device
    machine = {
        "host": host, "platform": platform.platform(), "threads": torch.get_num_threads(), "cores": launcher.PINNED,
        "torch": torch.__version__, "instances": config.cluster.world_size, "backend": config.cluster.backend,
        "fabric": fabric, "model": config.world.model, "model_dtype": config.world.dtype,
        "layers": world.model.config.num_layers, "hidden": world.model.config.hidden_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }  # fmt: skip
    return Profile(
        name=config.name or f"measured-{host}", provenance="measured",
        description=f"qroute calibrate{' --quick' if config.quick else ''} on {host}: constants fitted to the runtime's "
        f"own trace (in situ), {fabric} between {config.cluster.world_size} instances",
        paths=specs, default_paths=tuple(specs), compute=compute, machine=machine,
        created=dt.datetime.now(dt.timezone.utc).isoformat(), fits=fits,
    )  # fmt: skip
