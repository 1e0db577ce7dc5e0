"""`qroute bench-agents`: flags and the thin handler (the work is in `qroute.bench_agents`)."""

from __future__ import annotations

import argparse
import json

from qroute.cli_args import add_agent_workload_args, int_at_least, names
from qroute.cli_cluster import _model_args, _output_args, _world, cluster_spec
from qroute.report import console

EPILOG = """\
--steps S is the number of requests each agent issues one after another; each request is
an indexer selection followed by --decode-steps decode steps. Policies: always-route,
always-fetch, predicate (the paper's per-request choice), reuse (fetch-and-keep in a block
cache, ski-rental), load (reuse with holder queueing in the cost model). Example:
  qroute bench-agents --policy always-fetch,always-route,predicate,reuse --agents 8 --steps 6
"""


def add_bench_agents(sub) -> None:
    from qroute import bench_agents

    p = sub.add_parser("bench-agents", help="an agentic workload on the real runtime under several planning policies",
                       description=bench_agents.__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    g = p.add_argument_group("policies")
    g.add_argument("--policy", type=names, default=("always-fetch", "always-route", "predicate", "reuse", "load"),
                   help="comma-separated policies, each serving the same requests (default: all five)")
    g.add_argument("--cache-blocks", type=int_at_least(1), default=128, help="block cache of reuse and load, in blocks (default: %(default)s)")
    g.add_argument("--profile", default="auto", help="'auto' (calibrate this cluster first: `qroute calibrate --quick` inside it, 20-25 s on 2 cores), a built-in profile, or a profile JSON (default: %(default)s)")
    g = p.add_argument_group("workload")
    add_agent_workload_args(g, agents=8, decode_steps=4, topk_blocks=4, rate=10.0)
    g.add_argument("--record", default=None, help="write the generated workload to this JSONL trace")
    g = p.add_argument_group("cluster")
    g.add_argument("--instances", type=int_at_least(2), default=3, help="instances incl. requesters (default: %(default)s)")
    g.add_argument("--requesters", type=int_at_least(1), default=1, help="requester instances (default: %(default)s)")
    g.add_argument("--concurrency", type=int_at_least(1), default=4, help="sessions decoding together per requester (default: %(default)s)")
    g.add_argument("--repeats", type=int_at_least(1), default=1, help="rounds over the policies, interleaved; throughput is the median round (default: %(default)s)")
    g.add_argument("--check-every", type=int_at_least(0), default=4, help="exactness spot check of every k-th request, 0 = none (default: %(default)s)")
    g.add_argument("--corpus-tokens", type=int_at_least(1), default=8192, help="tokens of corpus to prefill (default: %(default)s)")
    g.add_argument("--chunk-blocks", type=int_at_least(1), default=8, help="most blocks per chunk (default: %(default)s)")
    _model_args(g)
    _output_args(g, 300, "the JSON, CSV and PNG plots")  # fmt: skip


def bench_config(args):
    from qroute.bench_agents import AgentBenchConfig
    from qroute.workload.corpus import CorpusSpec
    from qroute.workload.generator import AgentWorkloadSpec

    corpus = CorpusSpec(max_tokens=args.corpus_tokens, block_size=args.block_size, chunk_blocks=args.chunk_blocks)
    workload = AgentWorkloadSpec(agents=args.agents, steps_per_agent=args.steps, arrival=args.arrival, rate=args.rate,
                                 decode_steps=args.decode_steps, step_tokens=args.step_tokens, topk_blocks=args.topk_blocks,
                                 sparse=args.sparse, zipf=args.zipf, persistence=args.persistence, seed=args.seed)  # fmt: skip
    return AgentBenchConfig(
        cluster=cluster_spec(args, args.instances, args.requesters),
        world=_world(args, corpus),
        workload=workload, policies=tuple(args.policy), trace=args.trace, record=args.record, concurrency=args.concurrency,
        cache_blocks=args.cache_blocks, check_every=args.check_every, repeats=args.repeats, profile=args.profile,
        progress=not (args.quiet or args.json),
    )  # fmt: skip


def cmd_bench_agents(args) -> None:
    from qroute.bench_agents import run_bench
    from qroute.report import agents as report

    results = run_bench(bench_config(args))
    if results.get("rank") != 0:
        return
    files = report.write_agents(results, args.out, args.tag)
    if args.json:
        print(json.dumps({**report.summary_json(results), "trace_errors": results["trace_errors"],
                          "files": [str(f) for f in files]}, indent=2))  # fmt: skip
    else:
        console.print_tables(report.policies_table(results))
        for e in results["trace_errors"]:
            print(f"trace: {e}")
        print(f"wall {results['wall_s']:.1f} s; wrote " + ", ".join(str(f) for f in files))
    if not all(p["exact"] for p in results["policies"].values()):
        raise SystemExit(2)
