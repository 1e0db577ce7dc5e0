"""`qroute calibrate`: measure this cluster's constants through the same launcher the runtime uses.

Rank 0 measures; the other instances serve (the runtime's holder loop). Per path: a
ping-pong latency sweep over message sizes (repeated, to report how much the fitted alpha
and beta move between repetitions), a streaming bandwidth sweep, and the fit of alpha and
beta with a small-message regime where one line misses. Then the compute coefficients on
rank 0 (`compute.QuickCalibration` with the full or the quick grids). The result is a
profile (schema `qroute.profile/1`) with machine and fabric metadata and each fit's
residuals, plus the sweep tables.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from qroute.calibration.compute import FULL, Grids, QuickCalibration
from qroute.calibration.fit import fit_path
from qroute.calibration.sweeps import BANDWIDTH_SIZES, LATENCY_SIZES, bandwidth_sweep, latency_sweep
from qroute.cost.profile import PathSpec, Profile, SmallRegime
from qroute.errors import QrouteError, positive_int
from qroute.runtime.executor import stop_holders
from qroute.runtime.holder import AttentionSpec, serve
from qroute.runtime.launcher import ClusterSpec, Instance, launch
from qroute.runtime.store import BlockStore
from qroute.runtime.world import WorldSpec, build_world, check_spec
from qroute.workload.corpus import CorpusSpec

LOOPBACK = "gloo-loopback"
QUICK_SIZES = tuple(8 * 4**i for i in range(0, 11, 2))  # 8 B .. 8 MiB, every other size


@dataclass(frozen=True)
class CalibrationConfig:
    cluster: ClusterSpec = field(default_factory=lambda: ClusterSpec(world_size=2))
    world: WorldSpec = field(default_factory=lambda: WorldSpec(corpus=CorpusSpec(max_tokens=512)))
    quick: bool = False
    repeats: int = 3
    name: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        positive_int("repeats", self.repeats)
        if self.cluster.world_size < 2:
            raise QrouteError(f"instances={self.cluster.world_size}: calibration needs 2 or more (a peer to measure)")


def run_calibration(config: CalibrationConfig) -> dict:
    """Launch the cluster, measure on rank 0, return its results (profile dict, sweeps, spread)."""
    check_spec(config.world)
    t0 = time.perf_counter()
    out = launch(config.cluster, calibrate_instance, config)[0]
    if out.get("rank") == 0:
        out["wall_s"] = time.perf_counter() - t0
    return out


def calibrate_instance(instance: Instance, config: CalibrationConfig) -> dict:
    world = build_world(config.world, instance.holders)
    if not instance.is_requester:
        c = world.model.config
        store = BlockStore([], c.num_layers, world.corpus.block_size, c.latent_width, world.model.dtype)
        dist.barrier()
        serve(store, AttentionSpec.of(world.model), instance.requester_ranks)
        return {"role": "holder", "rank": instance.rank}
    dist.barrier()
    try:
        if instance.rank != 0:
            return {"role": "requester", "rank": instance.rank}
        return _measure(instance, config, world)
    finally:
        stop_holders(instance.rank, instance.holders)


def _measure(instance: Instance, config: CalibrationConfig, world) -> dict:
    from rich.progress import Progress

    grids = Grids() if config.quick else FULL
    sizes = QUICK_SIZES if config.quick else LATENCY_SIZES
    reps = 10 if config.quick else 30
    repeats = 1 if config.quick else config.repeats
    peer = instance.holders[0]
    filler = torch.randint(0, world.model.config.vocab_size, (4,))
    between = lambda: world.model.prefill(filler)  # noqa: E731 - the model's compute between exchanges
    with Progress(disable=not config.progress, transient=True) as bar:
        task = bar.add_task("calibrating", total=repeats * len(sizes) + len(BANDWIDTH_SIZES) + 6)
        advance = lambda *_: bar.advance(task)  # noqa: E731
        sweeps = [latency_sweep(peer, sizes, reps, between=between, on_size=advance) for _ in range(repeats)]
        bandwidth = bandwidth_sweep(peer, BANDWIDTH_SIZES, reps=3 if config.quick else 5, on_size=advance)
        compute = QuickCalibration(world.model, world.geometry, world.corpus.block_size, _kv_dtype(world.model),
                                   grids, on_step=advance)  # fmt: skip
        coeffs = compute.compute()
    fits = [fit_path([2 * r.size for r in s], [r.median_s for r in s]) for s in sweeps]
    path = _path_spec(fits[-1], peer)
    profile = _profile(config, world, path, coeffs, compute.fits, fits, sweeps, bandwidth)
    return {"role": "requester", "rank": 0, "profile": profile.to_dict(), "latency": [[r.as_dict() for r in s] for s in sweeps],
            "bandwidth": bandwidth, "spread": spread(fits)}  # fmt: skip


def _kv_dtype(model) -> str:
    return "fp32" if model.dtype == torch.float32 else "bf16"


def _path_spec(fit, peer: int) -> PathSpec:
    small = SmallRegime(fit.knee_bytes, fit.small_alpha_s, fit.small_beta_Bps) if fit.knee_bytes else None
    return PathSpec(fit.alpha_s, fit.beta_Bps, f"measured: gloo ping-pong sweep with rank {peer}", small)


def spread(fits) -> dict:
    """How far alpha and beta move between repeated sweeps: (max - min) / median."""
    alphas = np.array([f.alpha_s for f in fits])
    betas = np.array([f.beta_Bps for f in fits])
    rel = lambda x: float((x.max() - x.min()) / np.median(x)) if len(x) > 1 else 0.0  # noqa: E731
    return {"repeats": len(fits), "alpha_s": alphas.tolist(), "beta_Bps": betas.tolist(),
            "alpha_rel_spread": rel(alphas), "beta_rel_spread": rel(betas)}  # fmt: skip


def _profile(config, world, path, coeffs, compute_fits, fits, sweeps, bandwidth) -> Profile:
    host = socket.gethostname()
    machine = {
        "host": host, "platform": platform.platform(), "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__, "instances": config.cluster.world_size, "backend": config.cluster.backend,
        "model": config.world.model, "model_dtype": config.world.dtype,
    }  # fmt: skip
    return Profile(
        name=config.name or f"measured-{host}", provenance="measured",
        description=f"qroute calibrate{' --quick' if config.quick else ''} on {host}: gloo over loopback between "
        f"{config.cluster.world_size} instances; compute on rank 0",
        paths={LOOPBACK: path}, default_paths=(LOOPBACK,), compute=coeffs, machine=machine,
        created=dt.datetime.now(dt.timezone.utc).isoformat(),
        fits={"path": {LOOPBACK: [f.report() for f in fits]}, **compute_fits},
    )  # fmt: skip
