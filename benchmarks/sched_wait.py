"""Do the two holders of a parallel route exchange compute side by side, and if not, who holds the CPU?

Runs `qroute calibrate --keep-trace` (3 instances: a requester and two holders) under `perf sched record` with
perf's clock set to CLOCK_MONOTONIC, the clock `time.perf_counter` reads on Linux, so the trace's stamps (the
requester's post, each holder's compute start) and the scheduler's events share one time line. Per 2-holder route
exchange of the training runs:
  first / second   the holders by compute start; `serial`: the second started only once the first had ended
  gap              second start less first end (ms; negative where they overlapped)
  wall             the exchange as the step paid it (ms; the same shapes in every run of the calibration)
  cpu              what the CPUs ran from the post to the second start (ms per exchange): idle, the requester, the
                   first holder, the second holder (any of its threads), anything else
Instances are found in the perf record as the processes whose threads include gloo's I/O thread, in rank order
(the launcher forks them by rank).

Measured on the dev VM (2 cores, `sched-wait-dev-2core-*`, one run each, back to back): unpinned (`--no-pin`),
41% (gloo) and 66% (shm) of 2-holder exchanges ran their holders one after the other, the second woken onto the
first one's core while the other core idled; with a core per holder, 12% and 23%; with such holders also under
SCHED_BATCH (`launcher.cpu_set`, `_pin`; the default since), 2% and 10%. The exchanges' median wall went from
3.68 to 2.78 to 2.78 ms (gloo) and from 2.87 to 2.42 to 2.14 ms (shm).

Run: python -m benchmarks.sched_wait [--tag T] [--no-pin] [--quick] [--shm]   (Linux, perf, root or
perf_event_paranoid <= 1). Writes benchmarks/results/sched-wait-<tag>-<date>.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

SWITCH = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) .*?==> next_comm=(.*?) next_pid=(\d+)")
FORK = re.compile(r"sched:sched_process_fork: comm=(.*?) pid=(\d+) child_comm=(.*?) child_pid=(\d+)")
IO_THREAD = "gloo_tcp_loop"  # every launched instance has one; the CLI process does not
BINS_MS = (0.0, 0.5, 1.0, 2.0, 4.0, float("inf"))  # the first holder's compute


class Schedule:
    """Who ran on each CPU when, from `perf script -F time,cpu,event,trace` lines of sched events."""

    def __init__(self, lines) -> None:
        self.runs: dict[int, list[tuple[float, int]]] = defaultdict(list)  # cpu -> [(from, tid)] in time order
        self.comm: dict[int, str] = {}
        self.parent: dict[int, int] = {}  # tid -> the thread that forked or cloned it
        self.io_threads: set[int] = set()  # tids ever seen under gloo's I/O thread's name
        for line in lines:
            m = SWITCH.search(line)
            if m:
                self.comm[int(m[4])], self.comm[int(m[6])] = m[3], m[5]
                self.io_threads.update(int(m[i + 1]) for i in (3, 5) if m[i] == IO_THREAD)
                self.runs[int(m[1])].append((float(m[2]), int(m[6])))
                continue
            m = FORK.search(line)
            if m:
                self.parent[int(m[4])] = int(m[2])
                self.comm.setdefault(int(m[4]), m[3])
        self.starts = {c: [t for t, _ in r] for c, r in self.runs.items()}

    def instances(self) -> list[int]:
        """The instances' process ids in rank order: the parents of gloo's I/O threads."""
        return sorted({self.parent[t] for t in self.io_threads if t in self.parent})

    def owner(self, tid: int, pids: list[int]) -> int | None:
        """The instance process `tid` belongs to (itself or a thread it, or its threads, started), or None."""
        seen = set()
        while tid not in pids and tid in self.parent and tid not in seen:
            seen.add(tid)
            tid = self.parent[tid]
        return tid if tid in pids else None

    def between(self, t0: float, t1: float) -> Counter:
        """Seconds each tid ran over [t0, t1], summed over CPUs (tid 0: idle)."""
        out: Counter = Counter()
        for cpu, runs in self.runs.items():
            i = max(bisect.bisect_right(self.starts[cpu], t0) - 1, 0)
            while i < len(runs) and runs[i][0] < t1:
                end = runs[i + 1][0] if i + 1 < len(runs) else t1
                if min(end, t1) > max(runs[i][0], t0):
                    out[runs[i][1]] += min(end, t1) - max(runs[i][0], t0)
                i += 1
        return out


def pairs(runs: list[list[dict]]) -> list[tuple[dict, dict]]:
    """The 2-holder route exchanges of a path's training runs: their two records, by compute start."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for i, records in enumerate(runs):
        for r in records:
            if r.get("kind") == "route" and r.get("parallel") == 2 and r.get("holder_start"):
                by[(i, r["step"], r["layer"])].append(r)
    return [tuple(sorted(recs, key=lambda r: r["holder_start"])) for recs in by.values() if len(recs) == 2]


def analyse(trace: dict, schedule: Schedule, slack_s: float = 5e-5) -> dict:
    """Per path: the exchanges' count, how many ran serial (overall and per bin of the first holder's compute), median
    times after the post (ms) and what the CPUs ran until the second holder started (ms per exchange)."""
    pids = schedule.instances()
    out = {"instances": pids}
    for path, runs in trace.items():
        rows, cpu = [], {True: Counter(), False: Counter()}
        for first, second in pairs(runs):
            post, end = first["t_post"], first["holder_start"] + first["holder_compute_s"]
            serial = second["holder_start"] >= end - slack_s
            rows.append((first["holder_compute_s"], serial, first["holder_start"] - post, end - post, second["holder_start"] - post,
                         max(first.get("wall_s", 0.0), second.get("wall_s", 0.0))))  # fmt: skip
            for tid, s in schedule.between(post, second["holder_start"]).items():
                cpu[serial][_role(schedule.owner(tid, pids), tid, pids, first["holder"], second["holder"])] += s
        if not rows:
            continue
        a = np.array(rows, dtype=float)
        n_serial = int(a[:, 1].sum())
        out[path] = {
            "exchanges": len(rows), "serial": n_serial, "serial_fraction": n_serial / len(rows),
            "by_first_compute_ms": [{"from": lo, "to": hi, "exchanges": int(sel.sum()), "serial_fraction": float(a[sel, 1].mean())}
                                    for lo, hi in zip(BINS_MS, BINS_MS[1:]) if (sel := (a[:, 0] * 1e3 >= lo) & (a[:, 0] * 1e3 < hi)).any()],
            "median_ms": {"first_start": float(np.median(a[:, 2])) * 1e3, "first_end": float(np.median(a[:, 3])) * 1e3,
                          "second_start": float(np.median(a[:, 4])) * 1e3, "gap": float(np.median(a[:, 4] - a[:, 3])) * 1e3,
                          "wall": float(np.median(a[:, 5])) * 1e3},
            "cpu_ms_per_exchange": {kind: {k: v * 1e3 / max(n, 1) for k, v in cpu[s].most_common()}
                                    for kind, s, n in (("serial", True, n_serial), ("overlapped", False, len(rows) - n_serial))},
        }  # fmt: skip
    return out


def _role(pid: int | None, tid: int, pids: list[int], first: int, second: int) -> str:
    if tid == 0:
        return "idle"
    if pid is None:
        return "other"
    rank = pids.index(pid)
    return {first: "first holder", second: "second holder"}.get(rank, "requester" if rank == 0 else f"rank {rank}")


def record(args, work: Path) -> tuple[dict, list[str]]:
    """`qroute calibrate --keep-trace` under perf sched record; its trace and the perf script lines."""
    if shutil.which("perf") is None:
        sys.exit("sched_wait: perf not found: expected the linux perf tool on PATH")
    cmd = [sys.executable, "-m", "qroute", "calibrate", "--keep-trace", "--quiet", "--instances", "3", "--out", str(work), "--tag", "t"]
    cmd += ["--shm"] * args.shm + ["--no-pin"] * args.no_pin + ["--quick"] * args.quick
    data = work / "perf.data"
    r = subprocess.run(["perf", "sched", "record", "-k", "CLOCK_MONOTONIC", "-o", str(data), "--", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"sched_wait: perf sched record of calibrate failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "time,cpu,event,trace"], capture_output=True, text=True, check=True)
    (trace_file,) = work.glob("trace-t-*.json")
    return json.loads(trace_file.read_text()), script.stdout.splitlines()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default=None, help="machine tag of the result file (default: the host name)")
    p.add_argument("--no-pin", action="store_true", help="calibrate with --no-pin (instances left to the scheduler)")
    p.add_argument("--quick", action="store_true", help="calibrate --quick")
    p.add_argument("--shm", action="store_true", help="calibrate --shm (both paths)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trace, lines = record(args, Path(tmp))
    result = analyse(trace, Schedule(lines))
    config = {"pin": not args.no_pin, "quick": args.quick, "shm": args.shm}
    path = write_result("sched-wait", {"config": config, "paths": {k: v for k, v in result.items() if k != "instances"}}, args.tag)
    for name, r in result.items():
        if name != "instances":
            print(f"{name}: {r['exchanges']} exchanges, {r['serial_fraction']:.0%} serial; by the first holder's compute (ms): "
                  + ", ".join(f"{b['from']:g}-{b['to']:g} {b['serial_fraction']:.0%} of {b['exchanges']}" for b in r["by_first_compute_ms"]))  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
