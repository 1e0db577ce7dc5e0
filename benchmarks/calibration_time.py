"""How long `qroute calibrate` takes, command line to files written, and where the time goes.

    python -m benchmarks.calibration_time [--runs N] [--modes quick,full,quick-shm,full-shm,full-shm-every] [--instances N] [--tag T]

Runs `qroute calibrate` as a user would (a fresh process each time, `--quiet`), the modes taking turns run by run,
and writes `benchmarks/results/calibration-time-<tag>-<date>.json`: per run the command's wall seconds, the
calibration's own `wall_s` (launch to the last holder stopped) and its `phase_s` (`grid.timed`: the cluster's
launch, the holders' prefill, the sweeps, each part of the training passes, the fits); per mode the median with
spread and how many runs met the issue's targets (`--quick` under 30 s, the default under 120 s). The profiles
each run wrote are kept beside (`--keep DIR`) so that `qroute validate --compare` can score them on the same runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import summary, write_result

# issue 4: `--quick` under 30 s, the default under 2 minutes, on 2 cores; `-shm`: with `--shm` (two paths, gloo and
# shared memory); `-every`: with `--every-shape` (every path serves every shape)
TARGET_S = {"quick": 30.0, "full": 120.0, "quick-shm": 30.0, "full-shm": 120.0, "full-shm-every": 120.0}
FLAGS = {"quick": ["--quick"], "full": [], "quick-shm": ["--quick", "--shm"], "full-shm": ["--shm"],
         "full-shm-every": ["--shm", "--every-shape"]}


def run_once(mode: str, instances: int, out: Path, tag: str, timeout_s: float) -> dict:
    """One `qroute calibrate` in a fresh process: its wall and the phases its calibration file records."""
    args = [sys.executable, "-m", "qroute", "calibrate", "--quiet", "--instances", str(instances), "--out", str(out),
            "--tag", tag, *FLAGS[mode]]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"calibration_time: qroute calibrate ({mode}) exited with {done.returncode}: {last}")
    calibration = max(out.glob(f"calibration-{tag}-*.json"), key=lambda f: f.stat().st_mtime)
    results = json.loads(calibration.read_text())
    return {"mode": mode, "tag": tag, "command_s": wall, "wall_s": results["wall_s"], "phase_s": results["phase_s"],
            "speed_rel_spread": {n: s.get("speed_rel_spread") for n, s in results["spread"].items()}}  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    """Per mode: the command's and the calibration's wall (median with spread), each phase's median, and how many
    runs met the target."""
    out = {}
    for mode in sorted({r["mode"] for r in runs}):
        mine = [r for r in runs if r["mode"] == mode]
        phases = sorted({p for r in mine for p in r["phase_s"]}, key=lambda p: -max(r["phase_s"].get(p, 0) for r in mine))
        out[mode] = {"target_s": TARGET_S[mode], "command_s": summary([r["command_s"] for r in mine]),
                     "wall_s": summary([r["wall_s"] for r in mine]),
                     "phase_median_s": {p: summary([r["phase_s"].get(p, 0.0) for r in mine])["median"] for p in phases},
                     "met": sum(r["command_s"] < TARGET_S[mode] for r in mine), "runs": len(mine)}  # fmt: skip
    return out


def modes(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in TARGET_S]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"modes {text!r}: expected a comma-separated list of {', '.join(TARGET_S)}")
    return names


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])  # fmt: skip
    p.add_argument("--runs", type=int, default=3, help="runs of each mode, the modes taking turns (default: 3)")
    p.add_argument("--modes", type=modes, default=["quick"], help="comma-separated: quick, full, quick-shm, full-shm, full-shm-every (`-shm`: with --shm, two paths; `-every`: with --every-shape; default: quick)")
    p.add_argument("--instances", type=int, default=3, help="instances, as `qroute calibrate --instances` (default: 3)")
    p.add_argument("--tag", default=None, help="machine tag of the results file (default: the host name)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep each run's profile and calibration here")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one calibration may take (default: 600)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs {args.runs}: expected 1 or more")
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.keep or scratch)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(args.runs):
            for mode in args.modes:
                runs.append(run_once(mode, args.instances, out, f"{mode}{i + 1}", args.timeout))
                print(f"{mode} {i + 1}: {runs[-1]['command_s']:.1f} s", flush=True)
    config = {"runs": args.runs, "modes": args.modes, "instances": args.instances}
    path = write_result("calibration-time", {"config": config, "summary": summarize(runs), "results": runs}, args.tag)
    print(path)
    return path


if __name__ == "__main__":
    main()
