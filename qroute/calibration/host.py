"""Calibration and validation of the host-memory tier (`qroute calibrate --host-tier`, `qroute validate --host-tier`).

One process is the whole cluster: the requester runs the model on the GPU and the holder
keeps every block in pinned host memory and attends on the host CPUs (`runtime.hosttier`).
The path between them is PCIe (`pcie`; `host-memcpy` on a machine without a GPU, where the
same code runs with plain memory copies). Calibration and validation are those of the
launched cluster (`calibrate.measure_paths`, `validate._sweep`): the same training grid
and in-situ fits, the same held-out sweep and metrics, with the OSU-style tables taken
with copies instead of messages:
    latency    a round trip: `size` bytes to the host (D2H, what a route's rows do), then
               back to the device (H2D from the host buffer, as the states come back)
    bandwidth  `window` back-to-back H2D copies of `size` bytes from pinned memory (a fetch)
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from qroute.calibration.calibrate import BANDWIDTH_SIZES, CalibrationConfig, measure_paths
from qroute.calibration.sweeps import SweepRow, _row
from qroute.cost import load_profile
from qroute.cost.profile import from_dict
from qroute.runtime import heap
from qroute.runtime.hosttier import HOST_HOLDER, HostTier, build_host_tier, sync


def copy_round_trip(device: torch.device, payload: torch.Tensor) -> float:
    """Seconds of one round trip of `payload` (on `device`): to the host and back, waited for."""
    sync(device)
    t0 = time.perf_counter()
    host = payload.to("cpu", copy=True)
    back = host.to(device, non_blocking=True, copy=True)
    sync(device)
    elapsed = time.perf_counter() - t0
    del back
    return elapsed


def copy_latency_sweep(device: torch.device, sizes: Sequence[int], reps: int = 30, warmup: int = 3,
                       on_size: Callable[[int], None] | None = None, rows: list | None = None) -> list[SweepRow]:  # fmt: skip
    """Round trips per size (`size` bytes each way), appended to `rows` as they are measured."""
    rows = [] if rows is None else rows
    for size in sizes:
        payload = torch.zeros(size, dtype=torch.uint8, device=device)
        samples = [copy_round_trip(device, payload) for _ in range(warmup + reps)][warmup:]
        rows.append(_row(size, samples))
        if on_size:
            on_size(size)
    return rows


def copy_bandwidth_sweep(device: torch.device, sizes: Sequence[int] = BANDWIDTH_SIZES, window: int = 16, reps: int = 5,
                         on_size: Callable[[int], None] | None = None, rows: list | None = None) -> list[dict]:  # fmt: skip
    """Host-to-device rate per size from pinned memory (`{size, MBps, MBps_p10, MBps_p90, n}`), appended to `rows`."""
    out = [] if rows is None else rows
    pin = device.type == "cuda"
    for size in sizes:
        src = torch.zeros(size, dtype=torch.uint8, pin_memory=pin)
        dst = torch.empty(size, dtype=torch.uint8, device=device)
        times = []
        for i in range(reps + 1):  # the first is a warm-up
            sync(device)
            t0 = time.perf_counter()
            for _ in range(window):
                dst.copy_(src, non_blocking=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        rates = window * size / np.array(times[1:]) / 1e6
        out.append({"size": size, "MBps": float(np.median(rates)), "MBps_p10": float(np.percentile(rates, 10)),
                    "MBps_p90": float(np.percentile(rates, 90)), "n": reps})  # fmt: skip
        if on_size:
            on_size(size)
    return out


def fabric(tier: HostTier) -> str:
    """The tier's path in words (the profile's `machine.fabric`)."""
    if tier.device.type == "cuda":
        return f"PCIe between {torch.cuda.get_device_name(tier.device)} and pinned host memory (host tier)"
    return "memory copies between a CPU requester and host memory (host tier without a GPU)"


def measure_host(config: CalibrationConfig, tier: HostTier) -> dict:
    """`calibrate.measure` for the host tier: copy sweeps, the training grid through the host link, the fits."""

    def sweeps(name: str, sizes, latency: dict, bandwidth: dict, advance) -> None:
        copy_latency_sweep(tier.device, sizes, 10 if config.quick else 30, on_size=advance, rows=latency.setdefault(name, []))
        copy_bandwidth_sweep(tier.device, reps=3 if config.quick else 5, on_size=advance, rows=bandwidth.setdefault(name, []))

    # no idle ladder: the holder lives in the requester's process, and a first step after the ladder's gaps (the GPU
    # prefilling, the host CPUs idle) cost +53% on an H100 host where the validation's first steps, after as long an
    # idle time between other requests, cost +15%, the grid's own median (docs/measurements.md, "The paths take turns")
    out = measure_paths(config, tier.world, [tier.path], HOST_HOLDER, sweeps, links=tier.links, fabric=fabric(tier),
                        ladder=False)  # fmt: skip
    out["profile"]["machine"]["backend"] = "in-process (host tier)"
    return out


def _heap(cluster) -> None:
    """The tier runs in this process: its heap retained as a launched instance's is (`ClusterSpec.retain_heap`)."""
    if cluster.retain_heap:
        heap.retain()


def run_host_calibration(config: CalibrationConfig) -> dict:
    """`qroute calibrate --host-tier`: build the tier on `config.device`, measure, return rank 0's results."""
    t0 = time.perf_counter()
    _heap(config.cluster)
    out = measure_host(config, build_host_tier(config.world, config.device))
    out["wall_s"] = time.perf_counter() - t0
    return out


def run_host_validation(config, calibrated: str | None = None) -> dict:
    """`qroute validate --host-tier`: the held-out sweep through the host link (one holder), after calibrating on
    the same tier when `config.profile` is "auto" (the fitted profile is written to `calibrated`)."""
    from qroute.calibration.reprice import with_compared
    from qroute.calibration.validate import _pricing, _sweep, budget_until
    from qroute.calibration.validation_metrics import metrics

    t0, start = time.perf_counter(), time.time()
    _heap(config.cluster)
    tier = build_host_tier(config.world, config.device)
    extra: dict = {}
    profile_file = config.profile
    if config.profile == "auto":
        cal = measure_host(CalibrationConfig(world=config.world, progress=config.progress, device=config.device), tier)
        profile = from_dict(cal["profile"], "calibration")
        path = Path(calibrated or "profile-auto.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cal["profile"], indent=2) + "\n")
        extra["calibration"], profile_file = cal, str(path)
    else:
        profile = load_profile(config.profile)
    rows = _sweep(replace(config, until=budget_until(config, start)), tier.world, 1, profile, links=tier.links)
    return with_compared({"rank": 0, "profile": profile.to_dict(), "profile_file": profile_file, "rows": rows,
                          "metrics": metrics(rows, config.margin), "wall_s": time.perf_counter() - t0,
                          "device": str(tier.device), "budget_s": config.budget_s, "pricing": _pricing(tier.world),
                          **extra}, config.compare, config.margin)  # fmt: skip
