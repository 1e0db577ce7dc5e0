"""`qroute simulate`: flags and the thin handler (the work is in `qroute.sim`, tables and plots in `qroute.report.sim`).

Everything is checked before the first simulated event: the topology against the profile, every what-if
profile, the workload (or the trace's good lines) against its layout. A trace is replayed without its
corpus: the layout is rebuilt from the trace itself (`trace_layout`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import socket
import sys
import time
from dataclasses import asdict

from qroute.cli_args import add_agent_workload_args, int_at_least, names
from qroute.cost import CostModel, Profile, load_profile
from qroute.cost.profile import from_dict
from qroute.errors import QrouteError, require
from qroute.geometry import KV_DTYPES, resolve
from qroute.policies import POLICIES
from qroute.report import console
from qroute.sim import Layout, SimConfig, SimWorkload, Topology, from_timed, prepare, simulate, synthetic
from qroute.sim.topology import PLACEMENTS

DESCRIPTION = """\
Serve one agent workload on the cluster simulator (qroute.sim: a virtual clock, no GPU) once per
policy, each from a fresh cluster, cache and policy state; report throughput, step latencies, bytes,
decisions, cache hits and holder / link utilisation, and where the planner's choice flips (crossover
maps). Every check runs before the first simulated event; a trace is replayed without its corpus.
"""
EPILOG = """\
The cluster is --nodes x --gpus-per-node instances (or --instances N: the fewest nodes of at most 8
GPUs that hold N evenly); requesters are spread round-robin over nodes, the rest hold the corpus.
--steps S is the number of requests each agent issues; each request selects a chunk (or its top-k
blocks with --sparse) and decodes --decode-steps steps of --step-tokens tokens (rows = tokens x heads).
--what-if sweeps one profile constant, a dotted path into the profile's JSON, one simulation per value:
  qroute simulate --nodes 2 --gpus-per-node 8 --requesters 4 --policy always-route,predicate
  qroute simulate --what-if paths.ibgda.alpha_s=2e-6,5e-6,1e-5 --policy predicate --json
  qroute simulate --what-if compute.attention.flops_per_s=1e14,6.6e14 --trace workload.jsonl
"""


def what_if_arg(text: str) -> tuple[str, tuple[float, ...]]:
    constant, sep, values = text.partition("=")
    try:
        numbers = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
        numbers = ()
    if not sep or not constant.strip() or not numbers:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CONSTANT=V1,V2,... e.g. paths.ibgda.alpha_s=2e-6,5e-6")
    return constant.strip(), numbers


def add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="a cluster-scale agent workload on the simulator under several planning policies",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    g = p.add_argument_group("cluster")
    g.add_argument("--instances", type=int_at_least(2), default=None, help="instances in all (default: --nodes x --gpus-per-node)")
    g.add_argument("--nodes", type=int_at_least(1), default=None, help="nodes (default: 2)")
    g.add_argument("--gpus-per-node", type=int_at_least(1), default=None, help="instances per node (default: 4)")
    g.add_argument("--requesters", type=int_at_least(1), default=2, help="requester instances (default: %(default)s)")
    g.add_argument("--intra", default="nvlink4", help="profile path within a node (default: %(default)s)")
    g.add_argument("--inter", default="ibgda", help="profile path across nodes (default: %(default)s)")
    g.add_argument("--holder-capacity", type=int_at_least(1), default=1, help="exchanges a holder serves at once (default: %(default)s)")
    g.add_argument("--placement", choices=PLACEMENTS, default="contiguous", help="blocks over holders (default: %(default)s)")
    g.add_argument("--replicas", type=int_at_least(0), default=0, help="extra copies of every block (default: %(default)s)")
    g.add_argument("--concurrency", type=int_at_least(1), default=4, help="sessions decoding together per requester (default: %(default)s)")
    g.add_argument("--cache-blocks", type=int_at_least(1), default=256, help="block cache of reuse and load, in blocks (default: %(default)s)")
    g.add_argument("--paced", action="store_true", help="admit a request only once it has arrived (the runtime does not pace)")
    g.add_argument("--base-step-s", type=float, default=0.0, help="a batch step's own forward pass, seconds (default: %(default)s)")
    g.add_argument("--no-task-prefill", action="store_true", help="do not price a request's task prefill at its open (decode only)")
    g = p.add_argument_group("policies and constants")
    g.add_argument("--policy", type=names, default=POLICIES, help="comma-separated policies, each serving the same requests (default: all five)")
    g.add_argument("--profile", default="published-h100", help="built-in profile or a profile JSON (default: %(default)s)")
    g.add_argument("--model", default="deepseek-v2-lite", help="preset or config.json: the attention geometry (default: %(default)s)")
    g.add_argument("--kv-dtype", choices=KV_DTYPES, default="bf16", help="KV cache dtype moved by fetch (default: %(default)s)")
    g.add_argument("--what-if", type=what_if_arg, default=None, metavar="CONSTANT=V1,V2,...",
                   help="sweep one profile constant (e.g. paths.ibgda.beta_Bps=1e10,5e10): one simulation per value")
    g = p.add_argument_group("workload (synthetic unless --trace)")
    add_agent_workload_args(g, agents=64, decode_steps=16, topk_blocks=8, rate=1000.0)
    g.add_argument("--task-tokens", type=int_at_least(1), default=256, help="an agent's own context before the chunk (default: %(default)s)")
    g.add_argument("--chunks", type=int_at_least(1), default=64, help="chunks of the corpus (default: %(default)s)")
    g.add_argument("--chunk-tokens", type=int_at_least(1), default=2048, help="tokens per chunk, a multiple of --block-size (default: %(default)s)")
    g.add_argument("--block-size", type=int_at_least(1), default=64, help="tokens per block (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="qroute-results", help="directory for the JSON, CSV and PNG plots (default: %(default)s)")
    g.add_argument("--tag", default=None, help="tag in the file names (default: the host name)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    g.add_argument("--quiet", action="store_true", help="no progress display")  # fmt: skip


# ----------------------------------------------------------------------------- configuration


def topology_of(args) -> Topology:
    """Nodes x GPUs from --nodes / --gpus-per-node, or --instances N alone: the fewest nodes of <= 8 GPUs holding N."""
    nodes, gpus, n = args.nodes, args.gpus_per_node, args.instances
    if n is None:
        nodes, gpus = nodes or 2, gpus or 4
    elif nodes is None and gpus is None:
        gpus = max(d for d in range(1, min(n, 8) + 1) if n % d == 0)
        nodes = n // gpus
    else:
        nodes = nodes or max(1, n // gpus)
        gpus = gpus or max(1, n // nodes)
        require(nodes * gpus == n, f"--instances {n} with {nodes} node(s) x {gpus} GPUs = {nodes * gpus}: "
                                   "expected nodes x GPUs per node = instances (or give only one of them)")  # fmt: skip
    return Topology(nodes, gpus, args.intra, args.inter, args.holder_capacity)


def workload_spec(args) -> SimWorkload:
    blocks, rest = divmod(args.chunk_tokens, args.block_size)
    require(rest == 0 and blocks > 0,
            f"chunk tokens={args.chunk_tokens}: expected a multiple of block size={args.block_size}")  # fmt: skip
    return SimWorkload(agents=args.agents, requests_per_agent=args.steps, decode_steps=tuple(args.decode_steps),
                       task_tokens=args.task_tokens, step_tokens=args.step_tokens, chunks=args.chunks, chunk_blocks=blocks,
                       block_size=args.block_size, topk_blocks=args.topk_blocks, sparse=args.sparse, zipf=args.zipf,
                       persistence=args.persistence, arrival=args.arrival, rate=args.rate, seed=args.seed)  # fmt: skip


def what_if_profile(profile: Profile, constant: str, value: float) -> Profile:
    """`profile` with one constant set: `constant` is a dotted path into its JSON form under `paths` or `compute`
    (`paths.ibgda.alpha_s`, `paths.ibgda.small.beta_Bps`, `compute.attention.flops_per_s`); validated as a profile.
    Setting a path's `alpha_s` or `beta_Bps` drops its knots (profile/12), so that the line set prices every size."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    require(ok, f"what-if {constant}={value!r}: expected a finite number >= 0")
    data, keys = profile.to_dict(), constant.split(".")
    require(len(keys) >= 3 and keys[0] in ("paths", "compute"),
            f"what-if constant {constant!r}: expected paths.<path>.<field> or compute.<kernel>.<field>, "
            "e.g. paths.ibgda.alpha_s")  # fmt: skip
    node = data
    for depth, key in enumerate(keys):
        leaf = depth == len(keys) - 1
        choices = sorted(k for k, v in node.items() if _number(v) == leaf and (leaf or isinstance(v, dict)))
        if key not in choices:
            where = ".".join(keys[:depth]) or "the profile"
            raise QrouteError(f"what-if constant {constant!r}: no {'number' if leaf else 'entry'} {key!r} under {where}: "
                              f"expected one of {', '.join(choices)}")  # fmt: skip
        if leaf:
            node[key] = float(value)
            if keys[0] == "paths" and depth == 2 and key in ("alpha_s", "beta_Bps"):
                node.pop("knots", None)  # the path's line, set, rules every size: its measured knots would overrule it
        else:
            node = node[key]
    data.update(provenance="what-if", name=f"{profile.name} ({constant}={value:g})")
    return from_dict(data, f"what-if {constant}={value:g}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def trace_layout(header: dict, timed) -> Layout:
    """The corpus layout of a trace read without its corpus. Chunks tile the block ids in order (as
    `workload.corpus` lays them out) and a seen chunk spans its `chunk_tokens` in blocks: the chunks up to the
    last unseen one are laid from block 0 on, the ones after it back from `num_blocks` (both exact when the
    trace is consistent), each moved as far as its selected blocks need; an unseen chunk takes the gap it leaves."""
    bs, n, seen = header["block_size"], header["chunks"], {}
    for t in timed:
        r = t.request
        lo, hi, size = seen.get(r.chunk, (r.blocks[0], r.blocks[-1] + 1, -(-r.chunk_tokens // bs)))
        seen[r.chunk] = (min(lo, r.blocks[0]), max(hi, r.blocks[-1] + 1), size)
    early, cursor = [], 0
    for c in range(n):
        lo, hi, size = seen.get(c, (cursor, cursor, 0))
        early.append(max(cursor, min(lo, hi - size)))
        cursor = max(early[-1] + size, hi)
    end = max(header["num_blocks"], cursor)
    late, cursor = [0] * n, end
    for c in reversed(range(n)):
        lo, hi, size = seen.get(c, (cursor, cursor, 0))
        late[c] = cursor = max(early[c], min(lo, cursor - size))
    last_unseen = max((c for c in range(n) if c not in seen), default=-1)
    first = [early[c] if c <= last_unseen else late[c] for c in range(n)]
    return Layout(tuple(first), tuple(e - f for f, e in zip(first, first[1:] + [end])), bs)


def trace_workload(path: str):
    """(layout, requests, errors) of a `qroute.trace/1` file: bad lines are errors by line number, the rest kept."""
    from qroute.workload.trace import read_trace  # torch: only for a replay

    header, timed, errors = read_trace(path)
    layout, kept = trace_layout(header, timed), []
    for t in timed:
        r, (lo, n) = t.request, (layout.first[t.request.chunk], layout.blocks[t.request.chunk])
        if lo <= r.blocks[0] and r.blocks[-1] < lo + n:
            kept.append(t)
        else:
            errors.append(f"{path}: request id {r.id}: blocks {list(r.blocks)[:8]} outside chunk {r.chunk}'s blocks "
                          f"[{lo}, {lo + n}) as the trace lays them out: skipped")  # fmt: skip
    require(bool(kept), f"trace {path!r}: no request could be replayed ({len(errors)} bad: {errors[:1]})")
    return layout, from_timed(kept, layout), errors


def _workload_info(args, requests, layout, spec) -> dict:
    per_chunk: dict[int, int] = {}
    for r in requests:
        per_chunk[r.chunk] = per_chunk.get(r.chunk, 0) + 1
    counts = sorted(per_chunk.values(), reverse=True)
    top = max(1, math.ceil(0.1 * len(layout.first)))
    return {"source": args.trace or "synthetic", "requests": len(requests), "agents": len({r.agent for r in requests}),
            "session_steps": sum(r.steps for r in requests), "chunks": len(layout.first), "block_size": layout.block_size,
            "top10_share": sum(counts[:top]) / len(requests), "spec": asdict(spec) if spec else None}  # fmt: skip


def _cluster_info(args, topology: Topology) -> dict:
    requesters, holders = topology.roles(args.requesters)
    return {"nodes": topology.nodes, "gpus_per_node": topology.gpus_per_node, "instances": topology.instances,
            "intra": topology.intra, "inter": topology.inter, "paths": list(topology.path_names()),
            "holder_capacity": topology.holder_capacity, "requesters": list(requesters), "holders": len(holders),
            "placement": args.placement, "replicas": args.replicas, "concurrency": args.concurrency,
            "cache_blocks": args.cache_blocks}  # fmt: skip


def build(args) -> tuple[list[tuple[float | None, SimConfig]], dict]:
    """The simulations to run, one per what-if value (one without), each checked by `prepare`; and the context
    the report needs (cluster, workload, the base cost model, trace errors)."""
    topology, base = topology_of(args), load_profile(args.profile)
    if args.what_if:
        constant, values = args.what_if
        profiles = [(v, what_if_profile(base, constant, v)) for v in values]
    else:
        profiles = [(None, base)]
    spec, errors = None, []
    if args.trace:
        layout, requests, errors = trace_workload(args.trace)
    else:
        spec = workload_spec(args)
        layout, requests = synthetic(spec)
    common = dict(topology=topology, requesters=args.requesters, model=args.model, policies=tuple(args.policy),
                  requests=tuple(requests), layout=layout, concurrency=args.concurrency, cache_blocks=args.cache_blocks,
                  placement=args.placement, replicas=args.replicas, kv_dtype=args.kv_dtype, base_step_s=args.base_step_s,
                  paced=args.paced, price_task_prefill=not args.no_task_prefill,
                  progress=not (args.quiet or args.json))  # fmt: skip
    configs = [(v, SimConfig(profile=p, **common)) for v, p in profiles]
    prepared = [prepare(c) for _, c in configs]  # every error before the first event
    context = {"cluster": _cluster_info(args, topology), "workload": _workload_info(args, requests, layout, spec),
               "trace_errors": errors,
               "model": CostModel(resolve(args.model), base, args.kv_dtype), "requests": requests, "layout": layout,
               "heads": prepared[0].model.geometry.heads}  # fmt: skip
    return configs, context


# ----------------------------------------------------------------------------- the handler


def run(args) -> dict:
    """Build, simulate once per what-if value, add the planner's crossover maps: the results dict."""
    from qroute.report import sim as report

    t0 = time.perf_counter()
    configs, ctx = build(args)
    runs = []
    for value, config in configs:
        if value is not None and config.progress:
            print(f"what-if {args.what_if[0]}={value:g}", file=sys.stderr)
        runs.append(simulate(config))
    topology = configs[0][1].topology
    path = topology.inter if topology.nodes > 1 else topology.intra
    shapes = report.workload_shapes(ctx["requests"], ctx["layout"], ctx["heads"])
    what_if = None
    if args.what_if:
        per_value = [{"value": v, "profile": r["profile"], "policies": r["policies"]} for (v, _), r in zip(configs, runs)]
        what_if = {"constant": args.what_if[0], "values": list(args.what_if[1]), "runs": per_value}
    return {
        "created": dt.datetime.now().isoformat(timespec="seconds"), "machine": {"host": socket.gethostname()},
        "config": {k: v for k, v in vars(args).items() if k != "command"},
        "profile": ctx["model"].profile.name, "model": runs[0]["model"], "cluster": ctx["cluster"],
        "workload": ctx["workload"], "policies": runs[0]["policies"], "what_if": what_if,
        "crossover": report.crossovers(ctx["model"], shapes, path), "trace_errors": ctx["trace_errors"],
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip


def cmd_simulate(args) -> None:
    from qroute.report import sim as report

    results = run(args)
    files = report.write_sim(results, args.out, args.tag)
    if args.json:
        print(json.dumps({**report.summary_json(results), "files": [str(f) for f in files]}, indent=2))
        return
    tables = [report.policies_table(results)]
    if results["what_if"]:
        tables.append(report.what_if_table(results))
    console.print_tables(*tables)
    for e in results["trace_errors"]:
        print(f"trace: {e}")
    print(f"wall {results['wall_s']:.1f} s; wrote " + ", ".join(str(f) for f in files))
