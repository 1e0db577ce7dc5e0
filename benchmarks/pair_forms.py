"""Does a route exchange with two holders cost the same whether it carries two requests or one?

Calibration trains the parallel route exchange on "pairs": two requests decoded together, each over one holder's
blocks. Validation's two-holder rows are one request whose selection spans both holders (hashed placement). This
serves, on 3 instances (a requester and two holders, each path of `--shm`), per message size (`--tokens`: step
tokens, rows = tokens x heads to each holder) and two chunk sizes (2 and 8 blocks a holder), `--reps` rounds of:
  one     a request over one holder's blocks (the one-holder price the excess is measured from)
  pair    two requests decoded together, one per holder (calibration's form)
  span    one request over the first blocks of two chunks, one on each holder (contiguous placement)
  hashed  one request over a chunk whose blocks alternate between the holders (validation's form)
and reports the warm exchanges' network seconds (the wall as the step paid it, less the slowest holder's compute):
median and quartiles per form, size and chunk.

Measured on the dev VM (2 cores, 2026-11-27; `pair-forms-dev-2core-*`): see the result file and docs/measurements.md ("The widest
route batch in the grid").

Run: python -m benchmarks.pair_forms [--tokens 8,16,24] [--reps 12] [--tag T]
Writes benchmarks/results/pair-forms-<tag>-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics

import torch.distributed as dist

from benchmarks.common import write_result
from qroute.calibration.insitu_records import route_exchanges
from qroute.calibration.shapes import forced_executor, serve, serve_together, shaped_request, spanning_request, warm_up
from qroute.runtime import holder, paths
from qroute.runtime.control import stop_holders
from qroute.runtime.holder import AttentionSpec, build_store
from qroute.runtime.launcher import ClusterSpec, launch
from qroute.runtime.store import Placement
from qroute.runtime.world import WorldSpec, build_world
from qroute.workload.corpus import CorpusSpec

STEPS, CHUNKS = 4, (2, 8)  # decode steps per request (the first, cold, left out); blocks a holder per request


def _forms(executor, world, tokens: int, hashed: bool) -> dict:
    """form -> serve(blocks a holder): the requests of that form, decoded with route forced."""
    if hashed:
        return {"hashed": lambda n: serve(executor, shaped_request(world, 2, tokens, 2 * n, STEPS, seed=13), "route")}
    holders = sorted(set(world.directory.holders))[:2]
    return {
        "one": lambda n: serve(executor, shaped_request(world, 1, tokens, n, STEPS, seed=11), "route"),
        "pair": lambda n: serve_together(executor, [shaped_request(world, 1, tokens, n, STEPS, seed=7 + j, on=h)
                                                    for j, h in enumerate(holders)], "route"),  # fmt: skip
        "span": lambda n: serve(executor, spanning_request(world, tokens, 2 * n, STEPS, seed=9), "route"),
    }


def _measure(instance, spec: WorldSpec, tokens: list[int], reps: int) -> dict:
    world = build_world(spec, instance.holders)
    if not instance.is_requester:
        store = build_store(instance.rank, world.corpus, world.directory, world.model)
        dist.barrier()
        holder.serve(store, AttentionSpec.of(world.model), instance.requester_ranks)
        return {}
    dist.barrier()
    out: dict = {}
    for name in paths.names():
        executor = forced_executor(world)
        executor.force_path = name
        warm_up(executor, world)
        for k in tokens:
            forms = _forms(executor, world, k, spec.placement.kind == "hashed")
            for _ in range(reps):  # forms interleaved, so that the machine's drift falls on all alike
                for form, run in forms.items():
                    for n in CHUNKS:
                        first = len(executor.trace)
                        run(n)
                        for recs in route_exchanges(executor.trace[first:]):
                            net = max(r.get("wall_s", r["rtt_s"]) for r in recs) - max(r["holder_compute_s"] for r in recs)
                            key = f"{name}|{form}|{k}|{n}|{len(recs)}|{max(r['payload_out'] + r['payload_back'] for r in recs)}"
                            out.setdefault(key, []).append(net)
    stop_holders(instance.rank, instance.holders)
    return out


def _rows(samples: dict, placement: str) -> list[dict]:
    rows = []
    for key, v in sorted(samples.items()):
        path, form, k, n, holders, nbytes = key.split("|")
        q = statistics.quantiles(v, n=4)
        rows.append({"placement": placement, "path": path, "form": form, "step_tokens": int(k), "blocks_per_holder": int(n),
                     "holders": int(holders), "bytes_per_holder": int(nbytes), "n": len(v), "median_s": statistics.median(v),
                     "p25_s": q[0], "p75_s": q[2]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="8,16,24", help="step tokens per request, comma-separated (rows = x heads)")
    ap.add_argument("--reps", type=int, default=12, help="rounds per form and size (each: 3 warm steps x layers)")
    ap.add_argument("--tag", default=None, help="machine tag of the result file (default: host name)")
    args = ap.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = []
    for placement in ("contiguous", "hashed"):
        spec = WorldSpec(corpus=CorpusSpec(max_tokens=8192, chunk_blocks=32), placement=Placement(placement))
        rows += _rows(launch(ClusterSpec(world_size=3, shm=True), _measure, spec, tokens, args.reps)[0], placement)
    for r in rows:
        print(f"{r['path']:14s} {r['form']:6s} {r['bytes_per_holder'] / 1e6:5.2f} MB x{r['holders']} {r['blocks_per_holder']} blocks:"
              f" {1e3 * r['median_s']:.2f} ms ({1e3 * r['p25_s']:.2f}-{1e3 * r['p75_s']:.2f})")  # fmt: skip
    config = {"tokens": tokens, "reps": args.reps, "steps": STEPS, "chunks": list(CHUNKS), "instances": 3}
    print("wrote", write_result("pair-forms", {"config": config, "rows": rows}, args.tag))


if __name__ == "__main__":
    main()
