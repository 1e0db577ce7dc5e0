"""The simulator against the real runtime: one agent workload, served by `bench-agents` and simulated (issue 7).

The runtime serves a generated workload on this machine's embedded cluster (1 requester, 2
holders, gloo on loopback) once per policy and records it as a trace; the simulator replays
the same trace on a 3-instance topology whose one path is the profile's, with the runtime
model's own geometry, the same placement, batching and cache size, and the runtime's measured
`base_step_s` (what a decode step costs beyond what the cost model prices: the batch's own
forward pass). Reported per policy: mean and p99 session-step latency and bytes moved, runtime
beside simulator, and their relative errors (targets: mean 10%, p99 20%).

Run: python -m benchmarks.sim_validate --profile PROFILE.json [--agents 8 --steps 8 --decode-steps 4]
Writes benchmarks/results/sim-validate-<machine>-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import write_result
from qroute.bench_agents import AgentBenchConfig, run_bench
from qroute.cost import load_profile
from qroute.runtime.launcher import ClusterSpec
from qroute.runtime.world import WorldSpec, build_model
from qroute.sim import SimConfig, Topology, from_timed, layout_of, simulate
from qroute.workload.corpus import CorpusSpec, build_corpus, tokenizer_for
from qroute.workload.generator import AgentWorkloadSpec
from qroute.workload.trace import read_trace

POLICIES = ("always-route", "always-fetch", "predicate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="a profile measured on this machine (qroute calibrate)")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="requests per agent")
    ap.add_argument("--decode-steps", type=int, default=4)
    ap.add_argument("--chunk-blocks", type=int, default=32)
    ap.add_argument("--corpus-tokens", type=int, default=16384)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()

    world = WorldSpec(corpus=CorpusSpec(max_tokens=args.corpus_tokens, chunk_blocks=args.chunk_blocks))
    workload = AgentWorkloadSpec(agents=args.agents, steps_per_agent=args.steps, decode_steps=(args.decode_steps,))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "workload.jsonl"
        runtime = run_bench(AgentBenchConfig(ClusterSpec(3, 1, timeout_s=600.0), world, workload, POLICIES,
                                             record=str(trace), concurrency=args.concurrency, check_every=4,
                                             repeats=args.repeats, profile=args.profile, progress=False))  # fmt: skip
        corpus = build_corpus(world.corpus, tokenizer_for(None))
        _, timed, errors = read_trace(trace, corpus)
        assert not errors, errors
        config_json = Path(tmp) / "config.json"
        model = build_model(world, corpus.vocab_size)
        config_json.write_text(json.dumps(model.config.to_hf()))
        layout = layout_of(corpus)
        rows = {}
        for name in POLICIES:
            measured = runtime["policies"][name]
            sim = simulate(SimConfig(
                topology=Topology(nodes=1, gpus_per_node=3, intra=_path(args.profile), inter=_path(args.profile)),
                requesters=1, profile=args.profile, model=str(config_json), policies=(name,),
                requests=tuple(from_timed(timed, layout)), layout=layout, concurrency=args.concurrency,
                cache_blocks=128, kv_dtype="fp32", row_dtype="fp32", base_step_s=measured["base_step_s"],
            ))["policies"][name]  # fmt: skip
            rows[name] = _compare(measured, sim)
    out = {"config": vars(args), "policies": rows, "workload": runtime["workload"]}
    path = write_result("sim-validate", out, machine_tag=args.tag)
    for name, r in rows.items():
        print(f"{name:13s} mean {r['runtime']['mean_s']*1e3:6.1f} / {r['sim']['mean_s']*1e3:6.1f} ms ({r['error']['mean_s']:+.0%})"
              f"  p99 {r['runtime']['p99_s']*1e3:6.1f} / {r['sim']['p99_s']*1e3:6.1f} ms ({r['error']['p99_s']:+.0%})"
              f"  bytes {r['error']['bytes']:+.0%}")  # fmt: skip
    print(f"wrote {path}")


def _path(profile: str) -> str:
    return load_profile(profile).default_paths[0]


def _compare(measured: dict, sim: dict) -> dict:
    keys = ("mean_s", "p50_s", "p99_s", "throughput")
    rt = {k: measured[k] for k in keys} | {"bytes": sum(measured["bytes"].values()), "base_step_s": measured["base_step_s"]}
    sm = {k: sim[k] for k in keys} | {"bytes": sum(sim["bytes"].values())}
    err = {k: (sm[k] - rt[k]) / rt[k] if rt[k] else None for k in (*keys, "bytes")}
    return {"runtime": rt, "sim": sm, "error": err}


if __name__ == "__main__":
    main()
