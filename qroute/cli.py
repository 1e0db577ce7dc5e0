"""qroute's command line: thin subcommands, each one library call.

Bad input exits with code 2 and one line on stderr naming the bad value; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from qroute import cli_agents, cli_cluster, cli_sim, queries
from qroute import geometry as geo
from qroute.cli_args import fraction, int_any, int_at_least, int_list, names, non_negative_float
from qroute.cost import CostModel, builtin_names, load_profile
from qroute.errors import QrouteError
from qroute.report import console
from qroute.runtime import forks

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


def _add_request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="deepseek-v2-lite",
                   help="preset name (see `qroute models`) or a checkpoint dir / config.json (default: %(default)s)")
    p.add_argument("--profile", default="published-h100",
                   help=f"built-in profile ({', '.join(builtin_names())}) or a profile JSON file (default: %(default)s)")
    p.add_argument("--rows", type=int_at_least(1), required=True, help="query rows (tokens x heads) per layer per decode step")
    p.add_argument("--chunk-tokens", type=int_at_least(1), required=True, help="selected tokens on each holder")
    p.add_argument("--holders", type=int_at_least(1), default=1, help="holders the selection is spread over (default: 1)")
    p.add_argument("--layers", type=int_at_least(1), default=None, help="layers (default: the model's)")
    p.add_argument("--sparse", action="store_true", help="selected blocks are scattered (gather) instead of one contiguous chunk")
    p.add_argument("--offset", type=int_any, default=0, help="reuse offset D of the chunk; fetch splices when D != 0 (default: 0)")
    p.add_argument("--reuse-steps", type=int_at_least(1), default=1, help="decode steps a fetched chunk serves (default: 1)")
    p.add_argument("--kv-dtype", choices=geo.KV_DTYPES, default="bf16", help="KV cache dtype moved by fetch (default: bf16)")
    p.add_argument("--paths", type=names, default=(), help="candidate paths, comma-separated (default: the profile's)")
    p.add_argument("--idle-ms", type=non_negative_float, default=None,
                   help="how long the holders sat idle before the request, in ms: a measured profile prices the "
                        "wake-up after that idle time (default: unknown, as calibration's back-to-back requests)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")  # fmt: skip


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
    _add_compare(sub)
    cli_cluster.add_demo(sub)
    cli_cluster.add_calibrate(sub)
    cli_cluster.add_validate(sub)
    cli_cluster.add_reprice(sub)
    cli_agents.add_bench_agents(sub)
    cli_sim.add_simulate(sub)
    return parser


EPILOG_COMPARE = """\
Repeated calibrations agree when each path's alpha, beta and the exchange times they price
are within the tolerance. Alpha and beta trade off where a calibration's exchanges span few
sizes, so compare the exchange times too; the route speed probe each calibration recorded
tells how fast the machine ran, and alpha over it takes that drift out. Example:
  qroute calibrate --tag run1 && qroute calibrate --tag run2
  qroute compare qroute-results/profile-run1-*.json qroute-results/profile-run2-*.json
"""


def _add_compare(sub) -> None:
    text = "compare profiles (repeated calibrations): each path's constants and exchange times side by side, with spread"
    p = sub.add_parser("compare", help=text, description=text, epilog=EPILOG_COMPARE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("profiles", nargs="+", help="two or more built-in profile names or profile JSON files")
    p.add_argument("--sizes", type=int_list, default=queries.COMPARE_SIZES,
                   help="exchange bytes (out + back), comma-separated (default: 1024,65536,1048576,16777216)")
    p.add_argument("--tolerance", type=fraction, default=0.10, help="largest spread that agrees (default: 0.10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def cmd_compare(args) -> None:
    if len(args.profiles) < 2:
        raise QrouteError(f"compare got {len(args.profiles)} profile: expected 2 or more")
    result = queries.compare_profiles([load_profile(p) for p in args.profiles], args.profiles, args.sizes, args.tolerance)
    if not result["paths"]:
        raise QrouteError(f"profiles {', '.join(args.profiles)} have no path in common: expected at least one")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from qroute.report.calibration import compare_table

    console.print_tables(compare_table(result))


def _cost_model(args) -> CostModel:
    return CostModel(geo.resolve(args.model), load_profile(args.profile), args.kv_dtype)


def _request(model: CostModel, args):
    idle = None if args.idle_ms is None else args.idle_ms / 1e3
    return queries.build_request(
        model, args.rows, args.chunk_tokens, args.holders, args.layers, args.sparse, args.offset, args.reuse_steps, args.paths,
        idle,
    )  # fmt: skip


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


COMMANDS = {
    "models": cmd_models, "plan": cmd_plan, "explain": cmd_explain, "compare": cmd_compare,
    "demo": cli_cluster.cmd_demo, "calibrate": cli_cluster.cmd_calibrate, "validate": cli_cluster.cmd_validate,
    "reprice": cli_cluster.cmd_reprice,
    "bench-agents": cli_agents.cmd_bench_agents,
    "simulate": cli_sim.cmd_simulate,
}  # fmt: skip


LAUNCHING = ("demo", "calibrate", "validate", "bench-agents")  # commands that launch a cluster of instances


def launches(argv: list[str]) -> bool:
    """Whether the command line `argv` will fork instances from the launcher's forkserver: a cluster command, not
    asking for help, not on the host-memory tier (one process), not under torchrun (which started the instances).
    Read from the raw words, before the parser is built: building it imports torch."""
    return (bool(argv) and argv[0] in LAUNCHING and not {"-h", "--help", "--host-tier"} & set(argv)
            and "RANK" not in os.environ)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    if launches(sys.argv[1:] if argv is None else argv):
        forks.start()  # it imports torch while this process does (see `runtime.forks`)
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
