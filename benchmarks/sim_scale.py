"""Simulator scale: >= 1 M decode steps (session-steps) over 1,024 instances, one core, bounded memory.

Target (issue 7): <= 60 s of wall time on the 2-core dev machine, with a progress bar.
Cluster: 128 nodes x 8 GPUs (NVLink4 within a node, IBGDA across, `published-h100`), 4 requesters
per node (512), 512 holders; 4,096 agents x 16 requests x 16 decode steps over a 2,048-chunk corpus
(2k-token chunks, Zipf 1.1), 8 sessions per requester batch.
Run: python -m benchmarks.sim_scale [--policies always-route,predicate] [--agents 4096] [--no-progress]
Writes benchmarks/results/sim-scale-<machine>-<date>.json (peak memory is the process's max RSS).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.common import write_result  # noqa: E402
from qroute.sim import SimConfig, SimWorkload, Topology, prepare, simulate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=128)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--requesters", type=int, default=512)
    ap.add_argument("--agents", type=int, default=4096)
    ap.add_argument("--requests-per-agent", type=int, default=16)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--policies", default="always-route,predicate", help="comma-separated; each a full run")
    ap.add_argument("--profile", default="published-h100")
    ap.add_argument("--machine", default=None, help="tag in the result's file name (default: QROUTE_MACHINE_TAG or host)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    workload = SimWorkload(agents=args.agents, requests_per_agent=args.requests_per_agent,
                           decode_steps=(args.decode_steps,), chunks=2048, chunk_blocks=32, block_size=64)  # fmt: skip
    config = SimConfig(topology=Topology(nodes=args.nodes, gpus_per_node=args.gpus_per_node), requesters=args.requesters,
                       profile=args.profile, policies=tuple(args.policies.split(",")), workload=workload, concurrency=args.concurrency,
                       progress=not args.no_progress)  # fmt: skip
    t0 = time.perf_counter()
    prepared = prepare(config)  # generates the workload, places the corpus, checks everything
    prepare_s = time.perf_counter() - t0
    out = simulate(config)
    wall = time.perf_counter() - t0 - prepare_s  # simulate prepares again: one prepare counted per policy below
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    runs = {}
    for name, p in out["policies"].items():
        summary = {k: v for k, v in p.items() if k not in ("holder_utilisation", "port_utilisation", "latency_cdf")}
        runs[name] = {"wall_s": prepare_s + p["wall_s"], "engine_wall_s": p["wall_s"], "steps_simulated": p["session_steps"],
                      "batch_steps": p["batch_steps"], "steps_per_s": p["session_steps"] / (prepare_s + p["wall_s"]),
                      "simulated": summary}  # fmt: skip
    worst = max(r["wall_s"] for r in runs.values())
    steps = min(r["steps_simulated"] for r in runs.values())
    result = {
        "config": {"nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "instances": out["instances"],
                   "requesters": out["requesters"], "holders": out["holders"], "agents": args.agents,
                   "requests_per_agent": args.requests_per_agent, "decode_steps": args.decode_steps,
                   "concurrency": args.concurrency, "policies": list(config.policies), "profile": args.profile,
                   "model": out["model"], "chunks": workload.chunks, "chunk_tokens": workload.chunk_blocks * workload.block_size,
                   "cores": 1},
        "units": {"wall_s": "s (prepare + one policy's run)", "peak_rss_mib": "MiB (max RSS of the whole process)"},
        "prepare_s": prepare_s, "total_wall_s": wall + prepare_s, "requests": out["requests"],
        "steps_simulated": steps, "worst_wall_s": worst, "peak_rss_mib": peak_mib, "policies": runs,
        "target": {"steps": 1_000_000, "instances": 1024, "wall_s": 60.0},
        "met": steps >= 1_000_000 and out["instances"] >= 1024 and worst <= 60.0,
    }  # fmt: skip
    del prepared
    path = write_result("sim-scale", result, args.machine)
    for name, r in runs.items():
        print(f"{name}: {r['steps_simulated']:,} decode steps ({r['batch_steps']:,} batch steps) over {out['instances']} "
              f"instances in {r['wall_s']:.1f} s ({r['steps_per_s']:,.0f} steps/s)")  # fmt: skip
    print(f"peak RSS {peak_mib:.0f} MiB; target {'met' if result['met'] else 'NOT met'} -> {path}")


if __name__ == "__main__":
    main()
