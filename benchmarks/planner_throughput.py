"""Planner decisions per second on one core: batched (`decide_batch`) and one request at a time (`plan`).

Target (issue 2): >= 1 M holder-decisions/s for batched planning.
Run: python benchmarks/planner_throughput.py [--n 1000000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, whatever numpy was built with
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from benchmarks.common import summary, timed, write_result  # noqa: E402
from qroute.cost import CostModel, load_profile  # noqa: E402
from qroute.geometry import preset  # noqa: E402
from qroute.planner import decide_batch, plan, uniform_request  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="holder decisions per batch")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--model", default="deepseek-v2-lite")
    ap.add_argument("--profile", default="published-h100")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # pin to one core
    model = CostModel(preset(args.model), load_profile(args.profile))
    rng = np.random.default_rng(0)
    rows = rng.integers(1, 4096, size=args.n)
    tokens = rng.integers(1, 8192, size=args.n)
    paths = tuple(model.profile.paths)  # every path is a candidate: the harder case
    batch = timed(lambda: decide_batch(model, rows, tokens, model.geometry.layers, 4, False, 128, paths), args.repeats)
    single_n = 2000
    requests = [uniform_request(int(r), int(t), 1, model.geometry.layers, 4, False, 128, paths)
                for r, t in zip(rows[:single_n], tokens[:single_n])]  # fmt: skip
    single = timed(lambda: [plan(model, r) for r in requests], max(3, args.repeats // 3), warmup=1)
    b, s = summary(batch), summary(single)
    result = {
        "config": {"n": args.n, "repeats": args.repeats, "model": args.model, "profile": args.profile,
                   "paths": list(paths), "cores": 1, "layers": model.geometry.layers, "reuse_steps": 4, "offset": 128},
        "batched_s": b,
        "batched_decisions_per_s": {"median": args.n / b["median"], "p10": args.n / b["p90"], "p90": args.n / b["p10"]},
        "single_plan_s": s,
        "single_plans_per_s": {"median": single_n / s["median"]},
        "target_decisions_per_s": 1e6,
    }  # fmt: skip
    path = write_result("planner", result)
    rate = result["batched_decisions_per_s"]
    print(f"batched: {rate['median'] / 1e6:.2f} M decisions/s (p10 {rate['p10'] / 1e6:.2f}, p90 {rate['p90'] / 1e6:.2f}); "
          f"one at a time: {result['single_plans_per_s']['median']:.0f} plans/s -> {path}")  # fmt: skip


if __name__ == "__main__":
    main()
