"""qroute's command line: thin subcommands, each one library call.

Bad input exits with code 2 and one line on stderr naming the bad value; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from qroute import geometry as geo
from qroute import queries
from qroute.cost import CostModel, builtin_names, load_profile
from qroute.errors import QrouteError
from qroute.report import console

EPILOG_PLAN = """\
Rows are the query rows (tokens x heads) of one decode step at one layer; with MLA one row
is ~1.1 KB out and ~1 KB back. Chunk tokens are the selected tokens on each holder.
Phase times are summed over layers and reuse steps. Examples:
  qroute plan --model deepseek-v2-lite --profile published-h100 --rows 256 --chunk-tokens 2048 --holders 1 --layers 1
  qroute plan --model deepseek-v2-lite --rows 16 --chunk-tokens 2048 --holders 1 --offset 4096 --reuse-steps 32
"""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected an integer >= {minimum}")
        return value

    return parse


def _int_any(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _int_list(text: str) -> tuple[int, ...]:
    parse = _int_at_least(1)
    values = tuple(parse(v) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 1")
    return values


def _paths(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated path names")
    return names


def _add_request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="deepseek-v2-lite",
                   help="preset name (see `qroute models`) or a checkpoint dir / config.json (default: %(default)s)")
    p.add_argument("--profile", default="published-h100",
                   help=f"built-in profile ({', '.join(builtin_names())}) or a profile JSON file (default: %(default)s)")
    p.add_argument("--rows", type=_int_at_least(1), required=True, help="query rows (tokens x heads) per layer per decode step")
    p.add_argument("--chunk-tokens", type=_int_at_least(1), required=True, help="selected tokens on each holder")
    p.add_argument("--holders", type=_int_at_least(1), default=1, help="holders the selection is spread over (default: 1)")
    p.add_argument("--layers", type=_int_at_least(1), default=None, help="layers (default: the model's)")
    p.add_argument("--sparse", action="store_true", help="selected blocks are scattered (gather) instead of one contiguous chunk")
    p.add_argument("--offset", type=_int_any, default=0, help="reuse offset D of the chunk; fetch splices when D != 0 (default: 0)")
    p.add_argument("--reuse-steps", type=_int_at_least(1), default=1, help="decode steps a fetched chunk serves (default: 1)")
    p.add_argument("--kv-dtype", choices=geo.KV_DTYPES, default="bf16", help="KV cache dtype moved by fetch (default: bf16)")
    p.add_argument("--paths", type=_paths, default=(), help="candidate paths, comma-separated (default: the profile's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")  # fmt: skip


EPILOG_DEMO = """\
The embedded cluster runs on this machine (gloo over loopback): rank 0 is the requester,
the others hold the corpus's blocks. Each mode serves the same sub-agent requests; every
output is checked against a single-instance run. Under torchrun the same command joins
the job (gloo on CPU, NCCL on GPUs) instead of spawning instances.
"""


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--instances", type=_int_at_least(1), default=3, help="instances incl. requesters (default: %(default)s)")
    g.add_argument("--requesters", type=_int_at_least(1), default=1, help="requester instances (default: %(default)s)")
    g.add_argument("--placement", choices=("contiguous", "hashed"), default="contiguous", help="block placement (default: %(default)s)")
    g.add_argument("--replicas", type=_int_at_least(0), default=0, help="extra copies of each block (default: %(default)s)")
    g.add_argument("--timeout", type=_int_at_least(1), default=120, help="process-group timeout in seconds (default: %(default)s)")
    g = p.add_argument_group("model and corpus")
    g.add_argument("--model", default="deepseek-v2-lite", help="MLA preset (random weights, real attention geometry) or a checkpoint dir (default: %(default)s)")
    g.add_argument("--layers", type=_int_at_least(1), default=2, help="layers of a preset model (default: %(default)s)")
    g.add_argument("--hidden", type=_int_at_least(1), default=256, help="hidden size of a preset model (default: %(default)s)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype (default: %(default)s)")
    g.add_argument("--corpus-dir", default=None, help="directory of text to use as the shared corpus (default: the Python standard library's sources)")
    g.add_argument("--corpus-tokens", type=_int_at_least(1), default=16384, help="tokens of corpus to prefill (default: %(default)s)")
    g.add_argument("--block-size", type=_int_at_least(1), default=16, help="tokens per block (default: %(default)s)")
    g.add_argument("--chunk-blocks", type=_int_at_least(1), default=32, help="most blocks per chunk (default: %(default)s)")
    g = p.add_argument_group("workload")
    g.add_argument("--requests", type=_int_at_least(1), default=8, help="sub-agent requests (default: %(default)s)")
    g.add_argument("--steps", type=_int_list, default=(1, 8), help="decode steps per request, drawn per request from these comma-separated values (default: 1,8)")
    g.add_argument("--batch", type=_int_at_least(1), default=2, help="requests decoded together (default: %(default)s)")
    g.add_argument("--task-tokens", type=_int_at_least(1), default=24, help="tokens of each agent's own context (default: %(default)s)")
    g.add_argument("--step-tokens", type=_int_at_least(1), default=1, help="tokens decoded per step: the greedy one, then drafts (default: %(default)s)")
    g.add_argument("--topk-blocks", type=_int_at_least(1), default=4, help="blocks selected per request with --sparse (default: %(default)s)")
    g.add_argument("--sparse", action="store_true", help="select the top-k blocks of a chunk instead of the whole chunk")
    g.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of weights and workload (default: %(default)s)")
    g = p.add_argument_group("planning and output")
    g.add_argument("--profile", default="auto", help="'auto' (calibrate this cluster first), a built-in profile, or a profile JSON (default: %(default)s)")
    g.add_argument("--modes", type=_paths, default=("predicate", "route", "fetch", "local"), help="comma-separated modes (default: predicate,route,fetch,local)")
    g.add_argument("--out", default="qroute-results", help="directory for the JSON results and PNG plots (default: %(default)s)")
    g.add_argument("--json", action="store_true", help="print the results as one JSON object instead of a table")
    g.add_argument("--quiet", action="store_true", help="no progress display")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="qroute", description="Move the query, not the cache: plan and run cross-instance attention.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    m = sub.add_parser("models", help="presets with their routed payload and move-the-cache bytes")
    m.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    for name, text in (("plan", "predict route / fetch / local for one request and pick the cheapest"),
                       ("explain", "break-even table: where the choice flips in rows, steps, chunk size, probe latency")):
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG_PLAN,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_request_args(p)  # fmt: skip
    d = sub.add_parser("demo", help="run the embedded cluster: sub-agent requests served with route, fetch, local",
                       description=__import__("qroute.demo", fromlist=["x"]).__doc__, epilog=EPILOG_DEMO,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_demo_args(d)
    c = sub.add_parser("calibrate", help="measure this cluster's constants (paths and compute) and write a profile",
                       description=__import__("qroute.calibration.calibrate", fromlist=["x"]).__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_calibrate_args(c)
    v = sub.add_parser("validate", help="held-out sweep on the live cluster: prediction error, predicate hit rate, regret",
                       description=__import__("qroute.calibration.validate", fromlist=["x"]).__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_validate_args(v)
    return parser


def _cost_model(args) -> CostModel:
    return CostModel(geo.resolve(args.model), load_profile(args.profile), args.kv_dtype)


def _request(model: CostModel, args):
    return queries.build_request(
        model, args.rows, args.chunk_tokens, args.holders, args.layers, args.sparse, args.offset, args.reuse_steps, args.paths
    )


def cmd_models(args) -> None:
    rows = queries.models()
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
    else:
        console.print_tables(console.models_table(rows))


def cmd_plan(args) -> None:
    model = _cost_model(args)
    result = queries.plan_summary(model, _request(model, args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    console.print_tables(console.plan_table(result))
    print(f"choice: {result['choice']} (next: {result['runner_up']}, "
          f"{console.fmt_s(result['margin_s'])} slower, {result['margin_ratio']:.2f}x)")  # fmt: skip


def cmd_explain(args) -> None:
    model = _cost_model(args)
    result = queries.explain_summary(model, _request(model, args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    tables = [console.explain_table(result)]
    if result["path_crossovers"]:
        tables.append(console.crossover_table(result["path_crossovers"]))
    console.print_tables(*tables)


def demo_config(args):
    from qroute.demo import DemoConfig
    from qroute.runtime.launcher import ClusterSpec
    from qroute.runtime.store import Placement
    from qroute.runtime.world import WorldSpec
    from qroute.workload.agents import WorkloadSpec
    from qroute.workload.corpus import CorpusSpec

    corpus = CorpusSpec(args.corpus_dir, max_tokens=args.corpus_tokens, block_size=args.block_size, chunk_blocks=args.chunk_blocks)
    return DemoConfig(
        cluster=ClusterSpec(args.instances, args.requesters, timeout_s=float(args.timeout)),
        world=WorldSpec(args.model, args.layers, args.hidden, dtype=args.dtype, seed=args.seed, corpus=corpus,
                        placement=Placement(args.placement, args.replicas)),
        workload=WorkloadSpec(args.requests, args.task_tokens, args.steps, args.topk_blocks, args.sparse, seed=args.seed,
                              step_tokens=args.step_tokens),
        batch=args.batch, profile=args.profile, modes=tuple(args.modes), progress=not (args.quiet or args.json),
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
    files = demo_report.write_results(results, args.out)
    if args.json:
        print(json.dumps({"summary": results["summary"], "wall_s": results["wall_s"], "files": [str(f) for f in files]}, indent=2))
        return
    console.print_tables(demo_report.summary_table(results))
    print(f"wall {results['wall_s']:.1f} s (calibration {results['calibrate_s']:.1f} s); wrote " + ", ".join(str(f) for f in files))
    if not all(m["exact"] for m in results["summary"].values()):
        raise QrouteError("some outputs differ from the single-instance reference (see the table)")


def _add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", type=_int_at_least(2), default=2, help="instances (rank 0 measures, the rest serve; default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer sizes, repetitions and grid points (under 30 s on 2 cores)")
    p.add_argument("--repeats", type=_int_at_least(1), default=3, help="latency sweeps to run, to report the spread of alpha and beta (default: %(default)s)")
    p.add_argument("--model", default="deepseek-v2-lite", help="MLA preset or checkpoint dir whose compute is measured (default: %(default)s)")
    p.add_argument("--layers", type=_int_at_least(1), default=2, help="layers of a preset model (default: %(default)s)")
    p.add_argument("--hidden", type=_int_at_least(1), default=256, help="hidden size of a preset model (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype (default: %(default)s)")
    p.add_argument("--block-size", type=_int_at_least(1), default=16, help="tokens per block (default: %(default)s)")
    p.add_argument("--name", default=None, help="profile name (default: measured-<host>)")
    p.add_argument("--tag", default=None, help="machine tag in the file names (default: the host name)")
    p.add_argument("--out", default="qroute-results", help="directory for the profile and the sweep tables (default: %(default)s)")
    p.add_argument("--timeout", type=_int_at_least(1), default=300, help="process-group timeout in seconds (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--fabric", type=_fabric_links, default=(),
                   help="calibrate an emulated fabric instead of loopback (needs root): comma-separated links, each "
                        "NAME (plain veth), NAME:RATEmbit (veth shaped by tc tbf) or NAME:DELAYus (userspace delay line), "
                        "e.g. veth,shaped:200mbit,far:500us")  # fmt: skip


def _fabric_links(text: str) -> tuple:
    from qroute.fabric import LinkSpec

    links = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, setting = part.partition(":")
        try:
            if not setting:
                links.append(LinkSpec(name))
            elif setting.endswith("mbit"):
                links.append(LinkSpec(name, "veth", rate_mbit=float(setting[:-4])))
            elif setting.endswith("us"):
                links.append(LinkSpec(name, "delay", delay_us=float(setting[:-2])))
            else:
                raise argparse.ArgumentTypeError(f"link {part!r}: expected NAME, NAME:RATEmbit or NAME:DELAYus")
        except (QrouteError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"link {part!r}: {exc}") from None
    if not links:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one link")
    return tuple(links)


def cmd_calibrate(args) -> None:
    from qroute.calibration.calibrate import CalibrationConfig, run_calibration
    from qroute.report import calibration as report
    from qroute.runtime.launcher import ClusterSpec
    from qroute.runtime.world import WorldSpec
    from qroute.workload.corpus import CorpusSpec

    world = WorldSpec(args.model, args.layers, args.hidden, dtype=args.dtype,
                      corpus=CorpusSpec(max_tokens=8192, block_size=args.block_size, chunk_blocks=32))  # fmt: skip
    import datetime as dt
    import socket

    instances = 2 if args.fabric else args.instances
    partial = f"{args.out}/calibration-{args.tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}.partial.json"
    config = CalibrationConfig(ClusterSpec(instances, 1, timeout_s=float(args.timeout), links=args.fabric), world, args.quick,
                               args.repeats, args.name, progress=not (args.quiet or args.json), partial=partial)  # fmt: skip
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
    print(f"wall {results['wall_s']:.1f} s; wrote " + ", ".join(str(f) for f in files))


def _newest_profile(out: str) -> str:
    """The newest profile-*.json in `out`, else 'auto' (calibrate first)."""
    from pathlib import Path

    found = sorted(Path(out).glob("profile-*.json"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else "auto"


def _add_validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None,
                   help="profile to validate, or 'auto' to calibrate first in the same cluster (default: the newest "
                        "profile-*.json in --out, else auto)")  # fmt: skip
    p.add_argument("--step-tokens", type=_int_list, default=(1, 4, 16), help="tokens per step to sweep; rows = tokens x heads (default: 1,4,16)")
    p.add_argument("--chunk-blocks", type=_int_list, default=(4, 16, 32), help="chunk sizes in blocks to sweep (default: 4,16,32)")
    p.add_argument("--steps", type=_int_list, default=(1, 4), help="decode steps to sweep (default: 1,4)")
    p.add_argument("--reps", type=_int_at_least(1), default=3, help="runs per shape; the median is compared (default: %(default)s)")
    p.add_argument("--model", default="deepseek-v2-lite", help="MLA preset or checkpoint dir (default: %(default)s)")
    p.add_argument("--layers", type=_int_at_least(1), default=2, help="layers of a preset model (default: %(default)s)")
    p.add_argument("--hidden", type=_int_at_least(1), default=256, help="hidden size of a preset model (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="model dtype (default: %(default)s)")
    p.add_argument("--block-size", type=_int_at_least(1), default=16, help="tokens per block (default: %(default)s)")
    p.add_argument("--tag", default=None, help="machine tag in the file names (default: the host name)")
    p.add_argument("--out", default="qroute-results", help="directory for the CSV, JSON and plots (default: %(default)s)")
    p.add_argument("--timeout", type=_int_at_least(1), default=300, help="process-group timeout in seconds (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--fabric", type=_fabric_links, default=(),
                   help="validate over an emulated fabric (needs root; same syntax as calibrate --fabric): one holder, every path")  # fmt: skip


def cmd_validate(args) -> None:
    from qroute.calibration.validate import ValidationConfig, run_validation
    from qroute.report import validation as report
    from qroute.runtime.launcher import ClusterSpec
    from qroute.runtime.world import WorldSpec
    from qroute.workload.corpus import CorpusSpec

    profile = args.profile or _newest_profile(args.out)
    corpus = CorpusSpec(max_tokens=8192, block_size=args.block_size, chunk_blocks=max(args.chunk_blocks))
    config = ValidationConfig(
        profile, ClusterSpec(2 if args.fabric else 3, 1, timeout_s=float(args.timeout), links=args.fabric),
        WorldSpec(args.model, args.layers, args.hidden, dtype=args.dtype, corpus=corpus),
        args.step_tokens, args.chunk_blocks, args.steps, args.reps, progress=not (args.quiet or args.json),
    )  # fmt: skip
    import datetime as dt
    import socket

    calibrated = f"{args.out}/profile-{args.tag or socket.gethostname()}-auto-{dt.date.today():%Y-%m-%d}.json"
    results = run_validation(config, calibrated)
    if results.get("rank") != 0:
        return
    files = report.write_validation(results, args.out, args.tag)
    if profile == "auto":
        files.insert(0, calibrated)
    m = results["metrics"]
    if args.json:
        keys = ("median_ape", "p90_ape", "n", "per_path", "per_primitive", "per_phase", "hit_rate", "regret", "decisive_configs", "configs")
        print(json.dumps({**{k: m[k] for k in keys}, "profile": results["profile_file"], "files": [str(f) for f in files]}, indent=2))
        return
    console.print_tables(report.metrics_table(results))
    print(f"wall {results['wall_s']:.1f} s; wrote " + ", ".join(str(f) for f in files))


COMMANDS = {"models": cmd_models, "plan": cmd_plan, "explain": cmd_explain, "demo": cmd_demo, "calibrate": cmd_calibrate,
            "validate": cmd_validate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except QrouteError as exc:
        print(f"qroute {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `qroute ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
