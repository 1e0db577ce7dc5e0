"""How a decode step of many route exchanges pays their tail: the median of a sum against the sum of medians.

The path's line is fitted to each exchange shape's median. A request of n exchanges (steps x layers) is validated by
the median, over its runs, of their sum; when single exchanges have a heavy right tail (a stall of a few ms in some
of them), that median grows from n x the exchange's median (n small: most runs see no stall) towards n x its mean
(n large: every run sees its share). This reads a calibration's trace (`qroute calibrate --keep-trace`, run here
unless `--trace` names one) and, per path and exchange shape (holders, rows; warm exchanges, not a request's first
step), reports the exchanges' median, mean / median, p90 / median, and median(sum of n) / (n x median) for n = 2,
8 and 32, drawn with replacement from that shape's exchanges (fixed seed). An exchange's cost here is its network
share: the wall time until the last reply and the sends completed, less the slowest holder's compute.

Measured on the dev VM (2 cores; `exchange-tails-dev-2core-*`): see the result file and docs/measurements.md ("What the median
of one exchange misses").

Run: python -m benchmarks.exchange_tails [--trace FILE] [--shm] [--tag T]
Writes benchmarks/results/exchange-tails-<tag>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from qroute.calibration.insitu_records import exchange_times, route_exchanges

SUMS = (2, 8, 32)
DRAWS = 20000


def exchanges(records: list[dict]) -> dict[tuple[int, int], list[float]]:
    """Warm route exchanges of a trace (`insitu_records.route_exchanges`) by (holders, rows): each one's network seconds."""
    out: dict[tuple[int, int], list[float]] = defaultdict(list)
    for recs in route_exchanges(records):
        out[(len(recs), recs[0]["rows"])].append(exchange_times(recs)[0])
    return out


def tails(samples: list[float], sums=SUMS, draws: int = DRAWS, seed: int = 0) -> dict:
    """Median, mean / median, p90 / median of `samples`, and median(sum of n draws) / (n x median) per n in `sums`."""
    a = np.asarray(samples, dtype=float)
    med = float(np.median(a))
    rng = np.random.default_rng(seed)
    return {"n": len(a), "median_s": med, "mean_over_median": float(a.mean() / med),
            "p90_over_median": float(np.percentile(a, 90) / med), "max_s": float(a.max()),
            "sum_median_over_n_medians": {str(n): float(np.median(rng.choice(a, (draws, n)).sum(1)) / (n * med))
                                          for n in sums}}  # fmt: skip


def analyse(trace: dict) -> dict:
    """Per path (the trace's keys: a list of training runs each) and exchange shape, `tails` of its exchanges."""
    out = {}
    for path, runs in trace.items():
        pooled = [{**r, "run": i} for i, run in enumerate(runs) for r in run]
        shapes = exchanges(pooled)
        out[path] = [{"holders": h, "rows": rows, **tails(v)} for (h, rows), v in sorted(shapes.items()) if len(v) >= 10]
    return out


def calibrate_trace(shm: bool, work: Path) -> dict:
    cmd = [sys.executable, "-m", "qroute", "calibrate", "--keep-trace", "--quiet", "--instances", "3", "--out", str(work), "--tag", "t"]
    r = subprocess.run(cmd + ["--shm"] * shm, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"exchange_tails: calibrate failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    (trace_file,) = work.glob("trace-t-*.json")
    return json.loads(trace_file.read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=None, help="a `calibrate --keep-trace` trace (default: calibrate now)")
    p.add_argument("--shm", action="store_true", help="calibrate with --shm (both paths)")
    p.add_argument("--tag", default=None, help="machine tag of the result file (default: the host name)")
    args = p.parse_args(argv)
    if args.trace is not None:
        trace = json.loads(args.trace.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            trace = calibrate_trace(args.shm, Path(tmp))
    result = analyse(trace)
    config = {"trace": str(args.trace) if args.trace else "calibrated here", "shm": args.shm, "sums": SUMS, "draws": DRAWS}
    path = write_result("exchange-tails", {"config": config, "paths": result}, args.tag)
    for name, shapes in result.items():
        print(name)
        for s in shapes:
            sums = " ".join(f"n={n}: {v:.2f}" for n, v in s["sum_median_over_n_medians"].items())
            print(f"  {s['holders']} holder(s), {s['rows']:4d} rows: {s['n']:3d} exchanges, median {s['median_s'] * 1e3:.3f} ms, "
                  f"mean/median {s['mean_over_median']:.2f}, p90/median {s['p90_over_median']:.2f}; median of a sum / n medians {sums}")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
