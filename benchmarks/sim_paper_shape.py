"""The paper's shape on the simulator (`published-h100`, DeepSeek-V2-Lite geometry), through `qroute simulate`.

1. decode: 2 nodes x 8 GPUs, 4 requesters; 256 agents x 4 requests x 4 decode steps of 1 token (16 rows
   per layer) over 2k-token chunks, every policy. Its rows x chunk crossover map (the planner on a grid)
   shows where fetch / local take over from route.
2. bundles: the same workload decoding 256 tokens per step (4,096 rows per layer: a large row bundle).
3. saturation: one hot holder (the corpus is one chunk), k = 1..16 requesters reaching it over IBGDA, one
   session each (4 agents per requester, 8 requests x 4 decode steps), always-route, holder capacity 1,
   decode only (`--no-task-prefill`: with it, every requester prefills its tasks in lockstep and the holder
   idles meanwhile, which blurs the curve): step latency (p50, mean, p99), the hot holder's busy fraction,
   throughput. The knee is the first k whose p50 exceeds k = 1's by 10%.

Run: nice -n 19 python -m benchmarks.sim_paper_shape [--tag paper-shape]
Writes benchmarks/results/sim-<tag>-<date>.* (decode), sim-<tag>-bundles-<date>.* and
sim-<tag>-saturation-<date>.{json,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from benchmarks.common import RESULTS, machine
from qroute.cli import build_parser
from qroute.cli_sim import run
from qroute.report import sim as report

DECODE = ["--nodes", "2", "--gpus-per-node", "8", "--requesters", "4", "--agents", "256", "--steps", "4",
          "--decode-steps", "4", "--chunk-tokens", "2048", "--profile", "published-h100", "--quiet"]  # fmt: skip
REQUESTERS = tuple(range(1, 17))


def simulate(argv: list[str]) -> dict:
    return run(build_parser().parse_args(["simulate", *argv]))


def saturation() -> dict:
    """always-route against one hot holder, k requesters per holder: a what-if-shaped result and the knee."""
    runs = []
    for k in REQUESTERS:
        argv = ["--nodes", "17", "--gpus-per-node", "1", "--requesters", str(k), "--agents", str(4 * k), "--steps", "8",
                "--decode-steps", "4", "--chunks", "1", "--chunk-tokens", "2048", "--concurrency", "1",
                "--policy", "always-route", "--no-task-prefill", "--quiet"]  # fmt: skip
        runs.append({"value": k, "policies": simulate(argv)["policies"]})
    p50 = [r["policies"]["always-route"]["p50_s"] for r in runs]
    knee = next((r["value"] for r, p in zip(runs, p50) if p > 1.1 * p50[0]), None)
    return {"constant": "requesters per hot holder", "values": list(REQUESTERS), "runs": runs, "knee": knee}


def _row(k: int, p: dict) -> str:
    return (f"k={k:2d}  p50 {p['p50_s'] * 1e3:6.3f} ms  mean {p['mean_s'] * 1e3:6.3f} ms  p99 {p['p99_s'] * 1e3:6.3f} ms  "
            f"holder {p['holder_utilisation_max']:.0%}  {p['throughput']:8,.0f} tok/s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default="paper-shape")
    args = ap.parse_args()
    date = f"{dt.date.today():%Y-%m-%d}"
    files = report.write_sim(simulate(DECODE), RESULTS, args.tag)
    files += report.write_sim(simulate([*DECODE, "--step-tokens", "256"]), RESULTS, f"{args.tag}-bundles")
    sat = saturation()
    stem = RESULTS / f"sim-{args.tag}-saturation-{date}"
    lean = {**sat, "runs": [{"value": r["value"], "policies": report.lean_policies(r["policies"])} for r in sat["runs"]]}
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine(), **lean}, indent=2) + "\n")
    files += [stem.with_suffix(".json"), report.what_if_plot(sat, stem.with_suffix(".png"))]
    for r in sat["runs"]:
        print(_row(r["value"], r["policies"]["always-route"]))
    print(f"knee (p50 > 1.1 x k=1): k = {sat['knee']}")
    print("wrote " + ", ".join(str(f) for f in files))


if __name__ == "__main__":
    main()
