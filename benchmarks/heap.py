"""Re-prefill in fresh processes with glibc's default heap and with it retained (`qroute.runtime.heap`).

Each trial is a new Python process (a fresh heap, as a newly launched instance has) on one
thread that builds the demo's world and times `reprefill` of a chunk `--repeats` times,
counting minor page faults. Trials alternate default / retained, so the machine's drift
falls on both alike. Writes benchmarks/results/heap-<machine>-<date>.json.

Run: python -m benchmarks.heap [--tokens 512] [--trials 4] [--repeats 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import summary, write_result

TRIAL = r"""
import json, resource, sys, time, torch
from qroute.runtime import heap
from qroute.runtime.world import WorldSpec, build_world
from qroute.workload.corpus import CorpusSpec
retained = heap.retain() if sys.argv[1] == "retained" else False
tokens, repeats = int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
world = build_world(WorldSpec(corpus=CorpusSpec(max_tokens=8192, chunk_blocks=32)), [1, 2], device="cpu")
chunk = world.corpus.chunks[0].tokens[:tokens]
seconds, faults = [], []
for _ in range(repeats):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    world.model.reprefill(chunk, 16 + torch.arange(tokens))
    seconds.append(time.perf_counter() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"retained": retained, "seconds": seconds, "faults": faults}))
"""


def trial(heap: str, tokens: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TRIAL, heap, str(tokens), str(repeats)], env=env, check=True,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512, help="chunk tokens re-prefilled (default: %(default)s)")
    ap.add_argument("--trials", type=int, default=4, help="fresh processes per heap setting (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=8, help="re-prefills per process (default: %(default)s)")
    ap.add_argument("--tag", default=None, help="machine tag in the file name (default: the host name)")
    args = ap.parse_args()
    runs: dict[str, list] = {"default": [], "retained": []}
    for i in range(args.trials):
        for heap in ("default", "retained"):
            runs[heap].append(trial(heap, args.tokens, args.repeats))
            print(f"trial {i + 1}/{args.trials} {heap}: median {summary(runs[heap][-1]['seconds'])['median'] * 1e3:.1f} ms",
                  flush=True)  # fmt: skip
    result = {}
    for heap, trials in runs.items():
        seconds = [s for t in trials for s in t["seconds"][1:]]  # the first re-prefill of a process warms up
        faults = [f for t in trials for f in t["faults"][1:]]
        result[heap] = {"seconds": summary(seconds), "faults_per_reprefill": summary(faults),
                        "mallopt_applied": all(t["retained"] for t in trials) if heap == "retained" else None}  # fmt: skip
    ratio = result["default"]["seconds"]["median"] / result["retained"]["seconds"]["median"]
    config = {"tokens": args.tokens, "trials": args.trials, "repeats": args.repeats, "threads": 1, "model": "demo world"}
    path = write_result("heap", {"config": config, "results": result, "default_over_retained": ratio, "raw": runs},
                        args.tag)  # fmt: skip
    for heap, r in result.items():
        s, f = r["seconds"], r["faults_per_reprefill"]
        print(f"{heap:9s} re-prefill {s['median'] * 1e3:7.1f} ms (p10 {s['p10'] * 1e3:.1f}, p90 {s['p90'] * 1e3:.1f}), "
              f"page faults {f['median']:.0f}")  # fmt: skip
    print(f"default / retained: {ratio:.3f}  -> {path}")


if __name__ == "__main__":
    main()
