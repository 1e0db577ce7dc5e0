"""How long a fresh process takes to have a cluster of instances up, with the launcher's forkserver started first
thing (as `qroute demo`, `calibrate`, `validate` and `bench-agents` do: `runtime.forks.start`) or at the launch.

    python -m benchmarks.cluster_start [--runs N] [--instances N] [--tag T]

Each trial is a fresh Python process (`--trial early|late`): it imports what `qroute calibrate` imports, launches
`--instances` instances that meet at a barrier, and prints its seconds from its start to the imports done and to
the cluster done. The two ways take turns; writes `benchmarks/results/cluster-start-<tag>-<date>.json` with every
trial and each way's median with spread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def meet(instance) -> int:
    import torch.distributed as dist

    dist.barrier()
    return instance.rank


def trial(way: str, instances: int) -> dict:
    """One trial in this process (it must be fresh): seconds to the imports and to the cluster done."""
    t0 = time.perf_counter()
    from qroute.runtime import forks

    if way == "early":
        forks.start()
    import qroute.calibration.calibrate  # noqa: F401 - what `qroute calibrate` imports before it launches
    from qroute.runtime.launcher import ClusterSpec, launch

    imported = time.perf_counter() - t0
    launch(ClusterSpec(instances), meet)
    return {"way": way, "imports_s": imported, "cluster_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])  # fmt: skip
    p.add_argument("--runs", type=int, default=5, help="trials of each way, taking turns (default: 5)")
    p.add_argument("--instances", type=int, default=3, help="instances launched (default: 3)")
    p.add_argument("--tag", default=None, help="machine tag of the results file (default: the host name)")
    p.add_argument("--trial", choices=("early", "late"), help=argparse.SUPPRESS)  # one trial, in a fresh process
    args = p.parse_args(argv)
    if args.trial:
        print(json.dumps(trial(args.trial, args.instances)))
        return None
    if args.runs < 1 or args.instances < 1:
        p.error(f"--runs {args.runs} --instances {args.instances}: expected 1 or more of each")
    from benchmarks.common import summary, write_result

    trials = []
    for i in range(args.runs):
        for way in ("early", "late") if i % 2 == 0 else ("late", "early"):
            cmd = [sys.executable, "-m", "benchmarks.cluster_start", "--trial", way, "--instances", str(args.instances)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"cluster_start: a {way} trial exited with {done.returncode}: {last}")
            trials.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{way}: {trials[-1]['cluster_s']:.2f} s", flush=True)
    out = {w: {k: summary([t[k] for t in trials if t["way"] == w]) for k in ("imports_s", "cluster_s")} for w in ("early", "late")}
    path = write_result("cluster-start", {"config": {"runs": args.runs, "instances": args.instances}, "summary": out,
                                          "results": trials}, args.tag)  # fmt: skip
    print(path)
    return path


if __name__ == "__main__":
    main()
