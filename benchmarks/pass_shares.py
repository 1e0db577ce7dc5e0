"""Replay a validation's measured runs under two ways of spending its further passes.

    python -m benchmarks.pass_shares VALIDATION.json[.gz] [...] [--costs VALIDATION.json] [--seeds 20] [--out DIR] [--tag T]

`qroute validate` runs every configuration `reps` times, then spends the rest of its budget on the configurations
whose median is not yet known within `--ci`: each in every further pass ("every pass", the default), or with
`--share-floor 0.25` each in a share of them that grows with its confidence interval (`validate.shares`, "shares").
Both rules go through `validate.run_passes` itself here, with a clock that advances by each run's cost:

- a configuration's runs are drawn (with replacement) from the runs that validation measured for it;
- a run costs the configuration's median wall time (`wall_runs`, kept by validations since 2026-11-27; for older files
  from `--costs`, a newer validation of the same sweep, matched by configuration; else its measured total);
- the further passes get the time the validation itself spent beyond `reps` at those costs.

Per rule, means over the seeds: the p90 over configurations of the medians' CI half-widths (`median_ci`), the median
and p90 APE against each row's prediction, and the runs per configuration. Runs drawn this way carry no drift in
time and no per-pass cost (each pass's speed probe): this compares how the rules spend a budget, not how a machine
moves. Per file also the validation's own APE and its `level_floor`: the APE left once each (path, primitive,
holders) group's predictions are scaled by one factor fitted to its runs (the median measured / predicted), the
best any per-primitive rescale such as `cost.online` can do. Writes DIR/pass-shares-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path
from statistics import median
from types import SimpleNamespace

import numpy as np

from qroute.calibration.reprice import read_validation
from qroute.calibration.validate import ValidationConfig, run_passes
from qroute.calibration import validation_metrics
from qroute.calibration.validation_metrics import median_ci
from qroute.errors import QrouteError

KEY = ("holders", "pass", "primitive", "rows", "chunk_tokens", "steps", "batch")
RULES = {"every pass": 1.0, "shares": 0.25}  # share floors


def key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEY)


def costs_of(rows: list[dict]) -> dict[tuple, float]:
    """Median wall time of a run, per configuration, where the rows kept them."""
    return {key(r): median(r["wall_runs"]) for r in rows if r.get("wall_runs")}


def replay(rows: list[dict], cost: dict[tuple, float], floor: float, seed: int, reps: int = 5, max_reps: int = 40,
           ci: float = 0.02) -> dict:  # fmt: skip
    """One replay of `rows` (a validation's) with share floor `floor` (1: every pass)."""
    rng = np.random.default_rng(seed)
    rows = [r for r in rows if r["measured"]["total_s"] > 0 and r.get("measured_runs")]
    c = [cost.get(key(r), r["measured"]["total_s"]) for r in rows]
    budget = sum(max(0, len(r["measured_runs"]) - reps) * x for r, x in zip(rows, c))
    clock = [0.0]
    lane = SimpleNamespace(todo=[(i, {"runs": []}) for i in range(len(rows))])
    replayed = [row for _, row in lane.todo]

    def run_pass(lane, rep):
        for i, row in lane.todo:
            row["runs"].append({"total_s": float(rng.choice(rows[i]["measured_runs"]))})
            clock[0] += c[i] if rep >= reps else 0.0

    config = ValidationConfig("published-h100", reps=reps, max_reps=max_reps, ci=ci, share_floor=floor, until=budget)
    run_passes([lane], config, run_pass, clock=lambda: clock[0])
    runs = [[x["total_s"] for x in row["runs"]] for row in replayed]
    cis = [median_ci(x) for x in runs]
    apes = [abs(r["predicted"]["total_s"] - median(x)) / median(x) for r, x in zip(rows, runs)]
    return {"ci_p90": float(np.percentile(cis, 90)), "ape_median": float(np.median(apes)),
            "ape_p90": float(np.percentile(apes, 90)), "runs_median": float(np.median([len(x) for x in runs])),
            "spent_s": clock[0], "budget_s": budget}  # fmt: skip


def _summary(apes: list[float]) -> dict:
    return {"median_ape": float(np.median(apes)), "p90_ape": float(np.percentile(apes, 90))}


def level_floor(rows: list[dict]) -> dict:
    """The validation's APE, and the APE left once each (pass, primitive, holders) group's predictions are scaled by
    its level (`validation_metrics.level_floor`)."""
    rows = [r for r in rows if r["measured"]["total_s"] > 0]
    floor = validation_metrics.level_floor(rows)
    ape = [abs(r["predicted"]["total_s"] - r["measured"]["total_s"]) / r["measured"]["total_s"] for r in rows]
    return {"static": _summary(ape), "level_floor": {k: floor[k] for k in ("median_ape", "p90_ape")}}


def compare(rows: list[dict], cost: dict[tuple, float], seeds: int = 20) -> dict:
    """Each rule's replay metrics, means over `seeds` seeds (the same seeds for both)."""
    out = {}
    for name, floor in RULES.items():
        got = [replay(rows, cost, floor, seed) for seed in range(seeds)]
        out[name] = {k: float(np.mean([g[k] for g in got])) for k in got[0]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])  # fmt: skip
    p.add_argument("validations", nargs="+", help="validation JSON files (qroute validate --out), .json or .json.gz")
    p.add_argument("--costs", help="a validation whose rows kept wall_runs, for files older than them")
    p.add_argument("--seeds", type=int, default=20, help="replays per rule and file; 0: the level floor alone "
                   "(default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results", help="folder for the result file (default: %(default)s)")
    p.add_argument("--tag", default="", help="names the result file pass-shares-TAG-<date>.json")
    args = p.parse_args(argv)
    try:
        shared = costs_of(read_validation(args.costs)["rows"]) if args.costs else {}
        validations = [(path, read_validation(path)["rows"]) for path in args.validations]
    except QrouteError as exc:
        raise SystemExit(f"pass_shares: {exc}") from None
    files = []
    for path, rows in validations:
        got = {**level_floor(rows), **(compare(rows, {**shared, **costs_of(rows)}, args.seeds) if args.seeds else {})}
        files.append({"file": Path(path).name, **got})
        print(f"{Path(path).name}: static {100 * got['static']['median_ape']:.1f} / {100 * got['static']['p90_ape']:.1f}%,"
              f" level floor {100 * got['level_floor']['median_ape']:.1f} / {100 * got['level_floor']['p90_ape']:.1f}%")
        got = {k: v for k, v in got.items() if k in RULES}
        for name, m in got.items():
            print(f"  {name:10s} CI p90 {100 * m['ci_p90']:5.1f}%  APE {100 * m['ape_median']:4.1f} / {100 * m['ape_p90']:4.1f}%"
                  f"  runs {m['runs_median']:4.1f}")  # fmt: skip
    result = {"kind": "pass-shares", "date": time.strftime("%Y-%m-%d"), "machine": socket.gethostname(),
              "config": {"seeds": args.seeds, "costs": args.costs and Path(args.costs).name, "reps": 5, "max_reps": 40,
                         "ci": 0.02, "command": "python -m benchmarks.pass_shares " + " ".join(
                             [*(Path(v).name for v in args.validations), *(["--costs", Path(args.costs).name] if args.costs else []),
                              "--seeds", str(args.seeds)])},
              "files": files, "summary": _across(files)}  # fmt: skip
    out = Path(args.out) / f"pass-shares-{args.tag + '-' if args.tag else ''}{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")
    return result


def _across(files: list[dict]) -> dict:
    """Over the files: the static and level-floor p90s (median, range, how many at most 10%)."""
    out = {}
    for k in ("static", "level_floor"):
        p90 = [f[k]["p90_ape"] for f in files]
        out[k] = {"p90_median": float(np.median(p90)), "p90_min": min(p90), "p90_max": max(p90),
                  "p90_at_most_10pct": sum(x <= 0.10 for x in p90), "files": len(p90)}  # fmt: skip
    return out


if __name__ == "__main__":
    main()
