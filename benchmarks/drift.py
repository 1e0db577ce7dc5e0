"""Is a calibration's error the cost model's or the machine's? Validation requests and training requests, side by side.

`qroute validate --profile auto` calibrates in its cluster, then spends ~10 minutes on its held-out sweep. Where the
profile prices that sweep's requests high or low, either the fits are wrong for shapes they were not trained on (the
model's error), or the machine ran at another speed during the calibration than during the sweep (the machine's).
This separates the two. In one cluster (1 requester and 2 holders, gloo and `--shm` by default): `qroute calibrate`
(its training trace kept), then `--passes` rounds, each one validation pass (every configuration of `validate`'s
sweep with one holder, on every path) and right after it one more repeat of the calibration's training grid on
every path. Per block of requests and path, the *level* of two quantities against the calibrated profile, as the
median over the block's warm route exchanges with one holder (a request's first decode step left out; it has a
term of its own):
  holder    the holder's measured attention over the profile's (`CostModel.attention_s` of its rows and tokens);
  network   the exchange's wall less the holder's compute, over the path's price of that exchange's network
            (alpha at its bytes and both payloads moved).
A level of 1.10 means the block ran 10% slower than the profile. `waited`: the share of the holders' compute time
in which their serving thread did not run (1 - its CPU time over its wall time, the mean over the block): a core
shared with another process. `faults`: the page faults the instances took during the block (the calibration's
together, `calibration_faults`). Per path:
  - `drift`: how far the levels moved over the run, (max - min) / median over every block (calibration repeats
    included): the machine's speed;
  - `shape_bias`: each validation pass's level over the training block's right after it, the median over passes:
    what the fits get wrong on the sweep's shapes, with the machine's speed of that minute taken out.
With a shape bias near 1 and a wide drift, a static profile's error on this machine is the machine's.

Measured (2026-11-27, `drift-*` in benchmarks/results): on the dev VM (2 cores) the levels moved 9-48% within 4-5
minutes, between two modes about 1.2-1.4x apart, while the holder's shape bias was 0.91-1.06 and the network's
0.89-1.08 (no sign held from run to run); the holders' threads ran for all of their compute time (`waited` near 0).
On the H100 host's 16 cores the levels moved 10-19%.

Run: python -m benchmarks.drift [--passes 3] [--warm N] [--no-shm] [--tag T]   (~4-5 minutes on 2 cores). Writes
benchmarks/results/drift-<tag>-<date>.json and a PNG of the levels over time beside it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

QUANTITIES = ("holder", "network")


def _warm_single(trace: list[dict]) -> list[dict]:
    """The warm route records of exchanges with one holder carrying one group (rows of one request)."""
    return [r for r in trace if r.get("kind") == "route" and r.get("parallel", 1) == 1 and not r.get("first_step")
            and not r.get("ladder") and len(r.get("groups", ())) == 1]  # fmt: skip


def record_levels(record: dict, model) -> dict[str, float]:
    """One warm route record's measured over priced, per quantity (`model`: a CostModel with the profile)."""
    rows, tokens = record["groups"][0]
    path = model.profile.path(record["path"])
    exchange, c = model.route_bytes(rows), model.coef  # `CostModel.route`'s probe, transfer and return at one holder
    network = path.alpha(exchange) + path.route_move_s(rows * c.q_row_bytes, exchange) + \
        path.route_move_s(rows * c.o_row_bytes, exchange)  # fmt: skip
    wall = record.get("wall_s", record["rtt_s"])
    return {"holder": record["holder_compute_s"] / model.attention_s(rows, tokens),
            "network": (wall - record["holder_compute_s"]) / network}  # fmt: skip


def block_levels(trace: list[dict], model) -> dict:
    """A block's level per quantity: the median of its warm one-holder route records' levels; `n` records, and `t`
    the median post time (perf_counter seconds) of them (None without any)."""
    records = _warm_single(trace)
    if not records:
        return {"n": 0, "t": None, **{q: None for q in QUANTITIES}, "waited": None}
    levels = [record_levels(r, model) for r in records]
    cpu = [r["holder_cpu_s"] / r["holder_compute_s"] for r in records if r.get("holder_cpu_s") and r["holder_compute_s"] > 0]
    return {"n": len(records), "t": float(np.median([r["t_post"] for r in records])),
            **{q: float(np.median([x[q] for x in levels])) for q in QUANTITIES},
            "waited": float(1 - np.mean(cpu)) if cpu else None}  # fmt: skip


def summarize(blocks: list[dict]) -> dict:
    """Per path and quantity: `drift`, (max - min) / median of every block's level; `shape_bias`, the median over
    validation passes of the pass's level over the next training block's on that path; and the pairs."""
    out: dict = {}
    for path in sorted({b["path"] for b in blocks}):
        mine = [b for b in blocks if b["path"] == path]
        out[path] = {}
        for q in QUANTITIES:
            levels = [b[q] for b in mine if b[q] is not None]
            pairs = [(v[q], t[q]) for v, t in zip(mine, mine[1:]) if v["kind"] == "validation" and t["kind"] == "training"
                     and v[q] is not None and t[q] is not None]  # fmt: skip
            out[path][q] = {
                "levels": levels,
                "drift": float((max(levels) - min(levels)) / np.median(levels)) if levels else None,
                "pairs": [list(p) for p in pairs],
                "shape_bias": float(np.median([v / t for v, t in pairs])) if pairs else None,
            }
    return out


def instance_pids() -> list[int]:
    """The launched instances' process ids: the children of this process's parent (Linux /proc), this one among
    them; just this one where /proc does not say."""
    parent = os.getppid()
    try:
        return sorted(int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split())
    except OSError:
        return [os.getpid()]


def page_faults(pids: list[int]) -> dict[str, int]:
    """Page faults so far (minor + major, /proc/PID/stat) of this process (`requester`) and of the others together
    (`holders`); a process gone or unreadable counts 0."""
    out = {"requester": 0, "holders": 0}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out["requester" if pid == os.getpid() else "holders"] += int(fields[7]) + int(fields[9])
    return out


def _faults_since(before: dict[str, int], pids: list[int]) -> dict[str, int]:
    now = page_faults(pids)
    return {k: now[k] - before[k] for k in now}


def measure_blocks(instance, args) -> dict:
    """On rank 0 of the launched cluster: calibrate, then the rounds; every block's levels against the profile."""
    from qroute.calibration import calibrate, grid, validate
    from qroute.calibration.compute import dtype_name
    from qroute.cost.model import CostModel
    from qroute.cost.profile import from_dict
    from qroute.runtime import paths
    from qroute.runtime.control import KeepAlive

    world, vconfig = args["world"], args["validation"]
    shapes = grid.train_shapes()
    pids = instance_pids()
    for rnd in range(args.get("warm", 0)):  # untimed: the processes' heaps grown, every shape served once
        for name in paths.names() or [paths.world_path()]:
            grid.train_grid(world, shapes, lambda *_: None, seed=200 + rnd, path=name)
    t0, faults = time.perf_counter(), page_faults(pids)
    cal = calibrate.measure(instance, calibrate.CalibrationConfig(vconfig.cluster, vconfig.world, progress=False,
                                                                  keep_trace=True), world)  # fmt: skip
    calibration_faults = _faults_since(faults, pids)
    profile = from_dict(cal["profile"], "calibration")
    dtype = dtype_name(world.model)
    model = CostModel(world.geometry, profile, dtype, dtype)
    blocks = [{"kind": "calibration", "round": i, "path": name, **block_levels(trace, model)}
              for name, runs in cal["trace"].items() for i, trace in enumerate(runs)]  # fmt: skip
    names = list(profile.default_paths)
    lanes = [validate.Lane.open(vconfig, world, 1, profile, name, validate.sweep_shapes(vconfig), None) for name in names]
    alive, order = KeepAlive.of(world, vconfig.cluster.timeout_s), itertools.count()
    for rnd in range(args["passes"]):
        for lane in lanes:
            first, faults = len(lane.executor.trace), page_faults(pids)
            lane.run_pass(world, rnd, alive, order, lambda: None)
            blocks.append({"kind": "validation", "round": rnd, "path": lane.executor.force_path or names[0],
                           **block_levels(lane.executor.trace[first:], model), "faults": _faults_since(faults, pids)})  # fmt: skip
        for name in names:
            faults = page_faults(pids)
            trace = grid.train_grid(world, shapes, lambda *_: alive(), seed=100 + rnd, path=name)
            blocks.append({"kind": "training", "round": rnd, "path": name, **block_levels(trace, model),
                           "faults": _faults_since(faults, pids)})  # fmt: skip
    for b in blocks:  # seconds since the calibration began
        b["t"] = None if b["t"] is None else b["t"] - t0
    return {"blocks": blocks, "calibration_faults": calibration_faults, "instances": len(pids), "profile": cal["profile"],
            "wall_s": time.perf_counter() - t0}  # fmt: skip


def _instance(instance, args, _holders=None) -> dict:
    from qroute.calibration.validate import holders_serve

    return holders_serve(instance, args["validation"].world, lambda world: measure_blocks(instance, {**args, "world": world}))


def plot(blocks: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(11, 4), sharex=True)
    marks = {"calibration": "s", "validation": "o", "training": "^"}
    paths = sorted({b["path"] for b in blocks})
    for ax, q in zip(axes, QUANTITIES):
        for i, p in enumerate(paths):
            for kind, mark in marks.items():
                pts = [(b["t"], b[q]) for b in blocks if b["path"] == p and b["kind"] == kind and b[q] is not None]
                if pts:
                    ax.scatter(*zip(*pts), marker=mark, color=f"C{i}", alpha=0.8, label=f"{p}: {kind}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{q}: measured / profile")
        ax.set_xlabel("seconds since calibration began")
    axes[0].set_ylabel("level (median over warm one-holder route exchanges)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3, help="rounds of one validation pass + one training repeat")
    parser.add_argument("--warm", type=int, default=0, help="untimed repeats of the training grid on every path before "
                        "calibrating (default 0: calibrate as `qroute validate --profile auto` does)")
    parser.add_argument("--no-shm", action="store_true", help="gloo over loopback only (default: and shared memory)")
    parser.add_argument("--tag", default=None, help="machine tag of the result file (default: host name)")
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes {args.passes}: expected >= 1")
    from qroute.calibration.validate import ValidationConfig
    from qroute.runtime.launcher import ClusterSpec, launch

    vconfig = ValidationConfig(profile="auto", cluster=ClusterSpec(world_size=3, shm=not args.no_shm, timeout_s=300),
                               progress=False)  # fmt: skip
    cluster = replace(vconfig.cluster, run_s=1800.0)
    out = launch(cluster, _instance, {"validation": vconfig, "passes": args.passes, "warm": args.warm}, 1)[0]
    summary = summarize(out["blocks"])
    result = write_result("drift", {"config": {"passes": args.passes, "warm": args.warm, "shm": not args.no_shm, "instances": 3,
                                               "command": "python -m benchmarks.drift " + " ".join(argv or sys.argv[1:])},
                                    "summary": summary, **out}, args.tag)  # fmt: skip
    plot(out["blocks"], result.with_suffix(".png"))
    for path, qs in summary.items():
        for q, s in qs.items():
            print(f"{path:14s} {q:8s} levels {' '.join(f'{x:.2f}' for x in s['levels'])}  drift {s['drift']:.1%}  "
                  f"shape bias {s['shape_bias']:.3f}" if s["shape_bias"] is not None else f"{path} {q}: no pairs")  # fmt: skip
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
