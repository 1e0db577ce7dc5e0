"""The subcommands that start a cluster: `demo`, `calibrate`, `validate` (flags and thin handlers); and `reprice`,
which scores other profiles on a validation's runs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

from qroute.cli_args import fabric_links, int_at_least, int_list, names
from qroute.errors import QrouteError
from qroute.report import console

EPILOG_DEMO = """\
The embedded cluster runs on this machine (gloo over loopback): rank 0 is the requester,
the others hold the corpus's blocks. Each mode serves the same sub-agent requests; every
output is checked against a single-instance run. Under torchrun the same command joins
the job instead of spawning instances.
"""
FABRIC_HELP = ("an emulated fabric instead of loopback (needs root): comma-separated links, each NAME (plain veth), "
               "NAME:RATEmbit (veth shaped by tc tbf) or NAME:DELAYus (userspace delay line), e.g. veth,shaped:200mbit,far:500us")  # fmt: skip


def _model_args(g, what: str = "MLA preset (random weights, real attention geometry) or a checkpoint dir") -> None:
    g.add_argument("--model", default="deepseek-v2-lite", help=f"{what} (default: %(default)s)")
    g.add_argument("--layers", type=int_at_least(1), default=2, help="layers of a preset model (default: %(default)s)")
    g.add_argument("--hidden", type=int_at_least(1), default=256, help="hidden size of a preset model (default: %(default)s)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype (default: %(default)s)")
    g.add_argument("--block-size", type=int_at_least(1), default=16, help="tokens per block (default: %(default)s)")


def _output_args(g, timeout: int, what: str) -> None:
    g.add_argument("--out", default="qroute-results", help=f"directory for {what} (default: %(default)s)")
    g.add_argument("--tag", default=None, help="machine tag in the file names (default: the host name)")
    g.add_argument("--timeout", type=int_at_least(1), default=timeout, help="process-group timeout in seconds (default: %(default)s)")
    g.add_argument("--no-pin", action="store_true", help="leave the instances to the scheduler (default: each on cores of "
                   "its own where the machine has 2 per instance; with fewer, under gloo, each holder on one core)")  # fmt: skip
    g.add_argument("--default-heap", action="store_true", help="leave glibc's heap settings as they are (default: each "
                   "instance keeps freed memory, so large tensors reuse warm pages instead of page-faulting fresh ones; "
                   "docs/cost-model.md)")  # fmt: skip
    g.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="gloo: CPU instances over TCP; nccl: one "
                   "instance per GPU, GPU to GPU (needs as many GPUs as instances; default: %(default)s)")  # fmt: skip
    g.add_argument("--shm", action="store_true", help="a second path between the instances: shared memory on this host "
                   "beside gloo over loopback; calibration measures both and the planner picks per message (gloo only)")  # fmt: skip
    g.add_argument("--symm", action="store_true", help="every message between the GPUs by one-sided copies into each "
                   "GPU's symmetric memory (NVLink), headers through host memory, instead of NCCL point-to-point: the "
                   "path 'nvlink-symm' (nccl only, one host)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    g.add_argument("--quiet", action="store_true", help="no progress display")


def cluster_spec(args, instances: int, requesters: int, links: tuple = ()):
    """The embedded cluster the output arguments (`_output_args`) ask for."""
    from qroute.runtime.launcher import ClusterSpec

    return ClusterSpec(instances, requesters, timeout_s=float(args.timeout), links=links, pin=not args.no_pin,
                       backend=args.backend, retain_heap=not args.default_heap, shm=args.shm, symm=args.symm)  # fmt: skip


HOST_TIER_HELP = ("the host-memory tier instead of a launched cluster: one process, the requester on --device, a holder "
                  "with every block in pinned host memory computing on the host CPUs; the path is PCIe ('pcie'; "
                  "'host-memcpy' without a GPU)")  # fmt: skip


def _host_args(g) -> None:
    g.add_argument("--host-tier", action="store_true", help=HOST_TIER_HELP)
    g.add_argument("--device", default="auto", help="with --host-tier: the requester's device, auto (the GPU if any), cpu, "
                   "cuda or cuda:N (default: %(default)s)")  # fmt: skip


def _device(args) -> str | None:
    """The host tier's device, or None for a launched cluster (one error if --host-tier is combined with --fabric)."""
    if not args.host_tier:
        return None
    if args.fabric:
        raise QrouteError("--host-tier with --fabric: expected one of them (the host tier's path is PCIe)")
    from qroute.runtime.hosttier import resolve_device

    return str(resolve_device(args.device))


def _stem(args) -> str:
    return f"{args.tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}"


def _world(args, corpus):
    from qroute.runtime.world import WorldSpec

    return WorldSpec(args.model, args.layers, args.hidden, dtype=args.dtype, seed=getattr(args, "seed", 0), corpus=corpus)


def _wrote(files, wall_s: float, extra: str = "") -> None:
    print(f"wall {wall_s:.1f} s{extra}; wrote " + ", ".join(str(f) for f in files))


# ----------------------------------------------------------------------------- demo


def add_demo(sub) -> None:
    from qroute import demo

    p = sub.add_parser("demo", help="run the embedded cluster: sub-agent requests served with route, fetch, local",
                       description=demo.__doc__, epilog=EPILOG_DEMO, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    g = p.add_argument_group("cluster")
    g.add_argument("--instances", type=int_at_least(1), default=3, help="instances incl. requesters (default: %(default)s)")
    g.add_argument("--requesters", type=int_at_least(1), default=1, help="requester instances (default: %(default)s)")
    g.add_argument("--placement", choices=("contiguous", "hashed"), default="contiguous", help="block placement (default: %(default)s)")
    g.add_argument("--replicas", type=int_at_least(0), default=0, help="extra copies of each block (default: %(default)s)")
    g = p.add_argument_group("model and corpus")
    _model_args(g)
    g.add_argument("--corpus-dir", default=None, help="directory of text to use as the shared corpus (default: the Python standard library's sources)")
    g.add_argument("--corpus-tokens", type=int_at_least(1), default=16384, help="tokens of corpus to prefill (default: %(default)s)")
    g.add_argument("--chunk-blocks", type=int_at_least(1), default=32, help="most blocks per chunk (default: %(default)s)")
    g = p.add_argument_group("workload")
    g.add_argument("--requests", type=int_at_least(1), default=8, help="sub-agent requests (default: %(default)s)")
    g.add_argument("--steps", type=int_list, default=(1, 8), help="decode steps per request, drawn per request from these comma-separated values (default: 1,8)")
    g.add_argument("--batch", type=int_at_least(1), default=2, help="requests decoded together (default: %(default)s)")
    g.add_argument("--task-tokens", type=int_at_least(1), default=24, help="tokens of each agent's own context (default: %(default)s)")
    g.add_argument("--step-tokens", type=int_at_least(1), default=1, help="tokens decoded per step: the greedy one, then drafts (default: %(default)s)")
    g.add_argument("--topk-blocks", type=int_at_least(1), default=4, help="blocks selected per request with --sparse (default: %(default)s)")
    g.add_argument("--sparse", action="store_true", help="select the top-k blocks of a chunk instead of the whole chunk")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="seed of weights and workload (default: %(default)s)")
    g = p.add_argument_group("planning and output")
    g.add_argument("--profile", default="auto", help="'auto' (calibrate this cluster first: `qroute calibrate --quick` inside it, 17-22 s on 2 cores), a built-in profile, or a profile JSON (default: %(default)s)")
    g.add_argument("--modes", type=names, default=("predicate", "route", "fetch", "local"), help="comma-separated modes (default: predicate,route,fetch,local)")
    g.add_argument("--online", action="store_true", help="plan and predict with the profile rescaled online: per primitive "
                   "and phase group, the median measured / predicted of the last 16 batches served with that primitive")
    _output_args(g, 120, "the JSON results and PNG plots")  # fmt: skip


def demo_config(args):
    from qroute.demo import DemoConfig
    from qroute.runtime.store import Placement
    from qroute.workload.agents import WorkloadSpec
    from qroute.workload.corpus import CorpusSpec

    corpus = CorpusSpec(args.corpus_dir, max_tokens=args.corpus_tokens, block_size=args.block_size, chunk_blocks=args.chunk_blocks)
    world = _world(args, corpus)
    return DemoConfig(
        cluster=cluster_spec(args, args.instances, args.requesters),
        world=replace(world, placement=Placement(args.placement, args.replicas)),
        workload=WorkloadSpec(args.requests, args.task_tokens, args.steps, args.topk_blocks, args.sparse, seed=args.seed,
                              step_tokens=args.step_tokens),
        batch=args.batch, profile=args.profile, modes=tuple(args.modes), progress=not (args.quiet or args.json),
        online=args.online,
    )  # fmt: skip


def cmd_demo(args) -> None:
    from rich.console import Console

    from qroute.demo import run_demo, validate
    from qroute.report import demo as demo_report

    config = demo_config(args)
    validate(config)
    if not args.json and os.environ.get("RANK", "0") == "0":
        Console(stderr=True).print(f"[bold]qroute demo[/]: {args.instances} instances on this machine, results in {args.out}/")
    results = run_demo(config)
    if results.get("rank") != 0:  # under torchrun, rank 0 reports
        return
    files = demo_report.write_results(results, args.out, args.tag)
    if args.json:
        print(json.dumps({"summary": results["summary"], "wall_s": results["wall_s"], "files": [str(f) for f in files]}, indent=2))
        return
    console.print_tables(demo_report.summary_table(results))
    _wrote(files, results["wall_s"], f" (calibration {results['calibrate_s']:.1f} s)")
    if not all(m["exact"] for m in results["summary"].values()):
        raise QrouteError("some outputs differ from the single-instance reference (see the table)")


# ----------------------------------------------------------------------------- calibrate


def add_calibrate(sub) -> None:
    from qroute.calibration import calibrate

    p = sub.add_parser("calibrate", help="measure this cluster's constants (paths and compute) and write a profile",
                       description=calibrate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--instances", type=int_at_least(2), default=3, help="instances (rank 0 measures, the rest serve; 3 or more also fit the extra of each further holder in a parallel exchange; default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer sizes, shapes and samples, one training pass (several paths share it out), half the corpus (18-20 s on 2 cores with 3 instances, 23-27 s with --shm; see docs/cli.md)")
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="training runs, to report the spread of alpha and beta (default: %(default)s)")
    p.add_argument("--every-shape", action="store_true", help="with several paths (--shm, --fabric): every path serves every training shape in every repeat, each pass warming up, instead of the paths sharing the shapes out (about 1.5 times as long with two paths; see docs/cli.md)")
    p.add_argument("--name", default=None, help="profile name (default: measured-<host>)")
    p.add_argument("--fabric", type=fabric_links, default=(), help=f"calibrate {FABRIC_HELP}")
    p.add_argument("--keep-trace", action="store_true", help="also write the raw trace the fits read (trace-<tag>-<date>.json: "
                   "per path, per training run, every exchange and compute record, with perf_counter stamps)")  # fmt: skip
    _host_args(p)
    _model_args(p, "MLA preset or checkpoint dir whose compute is measured")
    _output_args(p, 300, "the profile and the sweep tables")  # fmt: skip


def cmd_calibrate(args) -> None:
    from qroute.calibration.calibrate import CalibrationConfig, run_calibration
    from qroute.calibration.grid import quick_corpus_tokens
    from qroute.report import calibration as report
    from qroute.workload.corpus import CorpusSpec

    cluster = cluster_spec(args, 2 if args.fabric else args.instances, 1, args.fabric)
    tokens = quick_corpus_tokens(cluster.world_size - 1) if args.quick else 8192  # the holders' prefill: 5 s of 8192
    world = _world(args, CorpusSpec(max_tokens=tokens, block_size=args.block_size, chunk_blocks=32))
    config = CalibrationConfig(cluster, world, args.quick, args.repeats, args.name, progress=not (args.quiet or args.json),
                               partial=f"{args.out}/calibration-{_stem(args)}.partial.json", device=_device(args),
                               keep_trace=args.keep_trace, every_shape=args.every_shape)  # fmt: skip
    results = run_calibration(config)
    if results.get("rank") != 0:
        return
    files = report.write_calibration(results, args.out, args.tag)
    if args.json:
        print(json.dumps({"profile": results["profile"], "spread": results["spread"], "files": [str(f) for f in files]}, indent=2))
        return
    tables = []
    for path, rows in results["latency"].items():
        tables += [report.latency_table(rows, path), report.bandwidth_table(results["bandwidth"][path], path)]
    tables.append(report.fit_table(results))
    if results["flips"]:
        tables.append(report.flips_table(results))
    console.print_tables(*tables)
    if results.get("phase_s"):
        print(report.phase_text(results["phase_s"]))
    _wrote(files, results["wall_s"])


# ----------------------------------------------------------------------------- validate


def add_validate(sub) -> None:
    from qroute.calibration import validate

    p = sub.add_parser("validate", help="held-out sweep on the live cluster: prediction error, predicate hit rate, regret",
                       description=validate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--profile", default=None, help="profile to validate, or 'auto' to calibrate first in the same cluster "
                   "(default: the newest profile-*.json in --out, else auto; auto with --host-tier)")  # fmt: skip
    p.add_argument("--step-tokens", type=int_list, default=(1, 4, 16), help="tokens per step to sweep; rows = tokens x heads (default: 1,4,16)")
    p.add_argument("--chunk-blocks", type=int_list, default=(4, 16, 32), help="chunk sizes in blocks to sweep (default: 4,16,32)")
    p.add_argument("--steps", type=int_list, default=(1, 4), help="decode steps to sweep (default: 1,4)")
    p.add_argument("--batches", type=int_list, default=(1, 3), help="requests decoded together: every shape alone, and "
                   "batches beyond 1 of the shapes with the most steps over chunks below the largest (default: 1,3)")
    p.add_argument("--reps", type=int_at_least(1), default=5, help="runs per shape, spread over passes of the whole sweep; the median is compared (default: %(default)s)")
    p.add_argument("--max-reps", type=int_at_least(1), default=15, help="further passes rerun the shapes whose median is "
                   "not yet known within --ci, up to this many runs (default: %(default)s; = --reps for a fixed count)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS", help="start no further pass (beyond --reps) "
                   "after this many seconds of the whole run, shared evenly by the setups (the paths take turns within "
                   "each); the runs taken are kept "
                   "(default: none)")  # fmt: skip
    p.add_argument("--ci", type=float, default=0.03, help="target half-width of each measured median's ~95%% confidence "
                   "interval, relative (default: %(default)s)")
    p.add_argument("--share-floor", type=float, default=0.25, help="each shape still uncertain runs in a share of the "
                   "further passes, (its interval / the widest)^2 but at least this, at a steady stride; 1: every "
                   "further pass (default: %(default)s)")
    p.add_argument("--instances", type=int_at_least(2), choices=(2, 3), default=3, help="1 requester + 2 holders (1 holder "
                   "with contiguous placement, then 2 with hashed), or 2 instances: the 1-holder setup only (default: %(default)s)")
    p.add_argument("--fabric", type=fabric_links, default=(), help=f"validate over {FABRIC_HELP}; one holder, every path")
    p.add_argument("--compare", type=names, default=(), metavar="PROFILES", help="also price every run with these "
                   "profiles (comma-separated files or built-in names, e.g. repeated calibrations) and report their "
                   "errors on the same measurements; each must price the validated paths (default: none)")  # fmt: skip
    _host_args(p)
    _model_args(p)
    _output_args(p, 300, "the CSV, JSON and plots")  # fmt: skip


EPILOG_REPRICE = """\
Each validation run keeps what the planner knew when it planned it (the requests, how long each
holder had sat idle, the primitive and path each holder ran), so any profile can be scored on
runs already measured, the measurement noise held fixed. Example: is a repeated calibration
better or worse than the one validated, on the very same runs?
  qroute validate --profile auto --tag v1 && qroute calibrate --tag again
  qroute reprice qroute-results/validation-v1-*.json qroute-results/profile-again-*.json
"""


def add_reprice(sub) -> None:
    text = "score other profiles on a validation's measured runs (no cluster): error, hit rate and regret of each"
    p = sub.add_parser("reprice", help=text, description=text, epilog=EPILOG_REPRICE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("validation", help="a validation's results: validation-*.json, or gzipped .json.gz")
    p.add_argument("profiles", nargs="+", help="built-in profile names or profile JSON files, each pricing the paths the runs took")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def cmd_reprice(args) -> None:
    from qroute.calibration.reprice import compared_profile, read_validation, with_compared
    from qroute.report import validation as report

    results = read_validation(args.validation)
    for name in args.profiles:  # fail fast: nothing is lost
        compared_profile(name, tuple(sorted({r.get("pass") for r in results["rows"]})))
    results = with_compared(results, tuple(args.profiles))
    if args.json:
        keep = ("median_ape", "p90_ape", "n", "per_path", "per_primitive", "hit_rate", "regret")
        print(json.dumps({"validated": {"profile": results.get("profile_file"), **{k: results["metrics"].get(k) for k in keep}},
                          "compared": results["compared"]}, indent=2))  # fmt: skip
        return
    console.print_tables(report.compared_table(results))


def newest_profile(out: str) -> str:
    """The newest profile-*.json in `out`, else 'auto' (calibrate first)."""
    found = sorted(Path(out).glob("profile-*.json"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else "auto"


def cmd_validate(args) -> None:
    from qroute.calibration.validate import ValidationConfig, run_validation
    from qroute.report import validation as report
    from qroute.workload.corpus import CorpusSpec

    device = _device(args)
    profile = args.profile or ("auto" if device else newest_profile(args.out))
    from qroute.calibration.grid import TRAIN_CHUNK_BLOCKS
    from qroute.calibration.shapes import PROBE

    # the speed probe's request needs a chunk of PROBE[1] blocks; calibrating first, the training grid's largest
    blocks = max(*args.chunk_blocks, PROBE[1], *(TRAIN_CHUNK_BLOCKS if profile == "auto" else ()))
    world = _world(args, CorpusSpec(max_tokens=8192, block_size=args.block_size, chunk_blocks=blocks))
    cluster = cluster_spec(args, 2 if args.fabric else args.instances, 1, args.fabric)
    config = ValidationConfig(profile, cluster, world, args.step_tokens, args.chunk_blocks, args.steps, args.batches,
                              args.reps, max(args.max_reps, args.reps), args.ci, args.share_floor, budget_s=args.budget,
                              progress=not (args.quiet or args.json), device=device, compare=args.compare)  # fmt: skip
    calibrated = f"{args.out}/profile-{args.tag or socket.gethostname()}-auto-{dt.date.today():%Y-%m-%d}.json"
    results = run_validation(config, calibrated)
    if results.get("rank") != 0:
        return
    files = report.write_validation(results, args.out, args.tag)
    if profile == "auto":
        files.insert(0, calibrated)
    m = results["metrics"]
    if args.json:
        keys = ("median_ape", "p90_ape", "n", "per_path", "per_primitive", "per_holders", "per_batch", "per_phase", "signed", "hit_rate", "regret",
                "decisive_configs", "configs", "drift", "drift_corrected", "online", "measurement")  # fmt: skip
        compared = {"compared": results["compared"]} if "compared" in results else {}
        print(json.dumps({**{k: m[k] for k in keys}, "profile": results["profile_file"], **compared,
                          "files": [str(f) for f in files]}, indent=2))  # fmt: skip
        return
    console.print_tables(report.metrics_table(results))
    if "compared" in results:
        console.print_tables(report.compared_table(results))
    _wrote(files, results["wall_s"])
