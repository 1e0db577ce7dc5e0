"""Which configurations do the profiles misprice the same way in every validation?

    python -m benchmarks.config_bias VALIDATION.json[.gz] [...] [--top 15] [--out DIR] [--tag T]

A static profile's error on one validated configuration is the sum of three parts: the level of its group (path,
primitive, holders: how fast the machine ran against the calibration), the configuration's own bias (a shape the
model prices wrongly), and noise (how this run of the sweep landed). Per validation, each row's log(measured /
predicted) total less its group's median is the configuration's residual; over the validations given, per
configuration: the mean residual (its bias, in the same sign as the rows' measured over predicted: + means priced
low), the spread (sd) between validations and how many. A bias that stays several standard errors away from 0 is a
term the model lacks; one whose sign changes between validations is noise. The rows of every file must come from
the same sweep: configurations are matched by pass (the path the sweep ran on), primitive, holders, step tokens,
chunk tokens, steps and batch.

Prints and writes: the mean |bias| and the mean sd over configurations, the mean bias by each of those features, and
the `--top` configurations by |bias| with each phase's median signed error (predicted / measured - 1) over the
validations. Writes DIR/config-bias[-TAG]-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time
from pathlib import Path
from statistics import mean, median, pstdev

from qroute.calibration.reprice import read_validation
from qroute.calibration.validation_metrics import group_levels, group_of
from qroute.errors import QrouteError

KEY = ("pass", "primitive", "holders", "step_tokens", "chunk_tokens", "steps", "batch")
PHASES = ("network_s", "compute_s", "merge_s")


def _key(row: dict) -> tuple:
    default = {"pass": row.get("path"), "batch": 1}
    return tuple(row.get(k, default.get(k)) for k in KEY)


def residuals(rows: list[dict]) -> dict[tuple, float]:
    """One validation's rows -> {configuration: log(measured / predicted) less the log of its group's level}."""
    rows = [r for r in rows if r["measured"]["total_s"] > 0 and r["predicted"]["total_s"] > 0]
    level = group_levels(rows)
    return {_key(r): math.log(r["measured"]["total_s"] / r["predicted"]["total_s"] / level[group_of(r)]) for r in rows}


def phase_errors(rows: list[dict]) -> dict[tuple, dict[str, float]]:
    """{configuration: {phase: predicted / measured - 1}} where both are positive."""
    out = {}
    for r in rows:
        m, p = r["measured"], r["predicted"]
        out[_key(r)] = {ph: p[ph] / m[ph] - 1 for ph in PHASES if m.get(ph, 0) > 0 and p.get(ph, 0) > 0}
    return out


def biases(validations: list[list[dict]], min_files: int = 2) -> dict[tuple, dict]:
    """Per configuration seen in at least `min_files` validations: mean residual (bias), sd, n, standard errors from
    0 (`t`), and each phase's median signed error over the validations."""
    per: dict[tuple, list[float]] = {}
    phases: dict[tuple, dict[str, list[float]]] = {}
    for rows in validations:
        for k, v in residuals(rows).items():
            per.setdefault(k, []).append(v)
        for k, errs in phase_errors(rows).items():
            for ph, e in errs.items():
                phases.setdefault(k, {}).setdefault(ph, []).append(e)
    out = {}
    for k, v in per.items():
        if len(v) < min_files:
            continue
        sd = pstdev(v)
        se = sd / math.sqrt(len(v) - 1) if len(v) > 1 else float("inf")
        out[k] = {"bias": mean(v), "sd": sd, "n": len(v), "t": mean(v) / se if se > 0 else float("inf"),
                  "phases": {ph: median(e) for ph, e in phases.get(k, {}).items()}}  # fmt: skip
    return out


def by_feature(got: dict[tuple, dict]) -> dict[str, dict[str, float]]:
    """Mean bias per (primitive, value) of each feature but the primitive itself."""
    out = {}
    for i, name in enumerate(KEY):
        if name == "primitive":
            continue
        cells: dict[str, list[float]] = {}
        for k, b in got.items():
            cells.setdefault(f"{k[1]} {name}={k[i]}", []).append(b["bias"])
        out[name] = {c: mean(v) for c, v in sorted(cells.items())}
    return out


def summarize(got: dict[tuple, dict], top: int = 15) -> dict:
    steady = [b for b in got.values() if abs(b["t"]) >= 3]
    ranked = sorted(got.items(), key=lambda kv: -abs(kv[1]["bias"]))[:top]
    return {"configs": len(got), "mean_abs_bias": mean(abs(b["bias"]) for b in got.values()),
            "mean_sd": mean(b["sd"] for b in got.values()), "steady": len(steady),
            "by_feature": by_feature(got),
            "top": [{**dict(zip(KEY, k)), **{x: b[x] for x in ("bias", "sd", "n", "t", "phases")}} for k, b in ranked]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])  # fmt: skip
    p.add_argument("validations", nargs="+", help="validation JSON files of one sweep (qroute validate --out)")
    p.add_argument("--top", type=int, default=15, help="configurations listed, by |bias| (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results", help="folder for the result file (default: %(default)s)")
    p.add_argument("--tag", default="", help="names the result file config-bias-TAG-<date>.json")
    args = p.parse_args(argv)
    if len(args.validations) < 2:
        raise SystemExit(f"config_bias: {len(args.validations)} validation given; expected 2 or more of one sweep")
    try:
        validations = [read_validation(path)["rows"] for path in args.validations]
    except QrouteError as exc:
        raise SystemExit(f"config_bias: {exc}") from None
    got = biases(validations)
    if not got:
        raise SystemExit("config_bias: no configuration appears in 2 or more of the validations given; expected "
                         "validations of one sweep")  # fmt: skip
    s = summarize(got, args.top)
    print(f"{len(validations)} validations, {s['configs']} configurations: mean |bias| {100 * s['mean_abs_bias']:.1f}%,"
          f" mean sd between validations {100 * s['mean_sd']:.1f}%; {s['steady']} with |bias| >= 3 standard errors")
    for row in s["top"]:
        shape = " ".join(f"{k}={row[k]}" for k in KEY)
        ph = ", ".join(f"{k[:-2]} {100 * v:+.0f}%" for k, v in row["phases"].items())
        print(f"  {100 * row['bias']:+5.1f}% (sd {100 * row['sd']:.1f}, n {row['n']})  {shape}  [priced: {ph}]")
    result = {"kind": "config-bias", "date": time.strftime("%Y-%m-%d"), "machine": socket.gethostname(),
              "config": {"files": [Path(v).name for v in args.validations], "top": args.top,
                         "command": "python -m benchmarks.config_bias " + " ".join(Path(v).name for v in args.validations)},
              **s}  # fmt: skip
    out = Path(args.out) / f"config-bias-{args.tag + '-' if args.tag else ''}{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
