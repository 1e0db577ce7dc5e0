"""Shared by benchmark scripts: machine metadata, robust statistics, result files named by machine and date."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What ran the benchmark."""
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
    }
    try:
        import numpy
        import torch

        info["numpy"], info["torch"] = numpy.__version__, torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summary(samples: list[float]) -> dict:
    """Median with spread (p10, p90, min, max) of repeated measurements; the deciles interpolate between samples
    (never beyond the smallest and largest, as the default method does for a few samples: until 2026-11-27)."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) >= 2 else [s[0]] * 9
    return {"median": statistics.median(s), "p10": q[0], "p90": q[-1], "min": s[0], "max": s[-1], "n": len(s)}


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    """Wall seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def write_result(kind: str, payload: dict, machine_tag: str | None = None) -> Path:
    """Write `benchmarks/results/<kind>-<machine>-<date>.json` with machine, date and payload."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    tag = machine_tag or os.environ.get("QROUTE_MACHINE_TAG") or socket.gethostname()
    path = RESULTS / f"{kind}-{tag}-{now:%Y-%m-%d}.json"
    path.write_text(json.dumps({"kind": kind, "date": now.isoformat(), "machine": machine(), **payload}, indent=2) + "\n")
    return path
