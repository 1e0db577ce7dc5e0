"""Tables, CSV and plots of `qroute validate`."""

from __future__ import annotations

import csv
import datetime as dt
import socket
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from qroute.calibration.fit import UNSTEADY  # noqa: E402
from qroute.report import write_data  # noqa: E402
from qroute.report.plots import COLORS  # noqa: E402

LETTER = {"route": "R", "fetch": "F", "local": "L"}


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def metrics_table(results: dict) -> Table:
    m = results["metrics"]
    t = Table(title=f"Validation of profile {results['profile']['name']}: predicted vs measured, held-out shapes")
    for col in ("scope", "median APE", "p90 APE", "runs"):
        t.add_column(col, justify="left" if col == "scope" else "right")
    t.add_row("all", _pct(m["median_ape"]), _pct(m["p90_ape"]), str(m["n"]))
    for key in ("per_path", "per_primitive", "per_holders", "per_batch", "per_phase"):
        for name, s in m.get(key, {}).items():
            t.add_row(f"{key[4:]} {name}", _pct(s["median_ape"]), _pct(s["p90_ape"]), str(s["n"]))
    c = m.get("drift_corrected") or {}
    if c.get("n"):
        t.add_row("all, host drift taken out", _pct(c["median_ape"]), _pct(c["p90_ape"]), str(c["n"]))
    o = m.get("online") or {}
    if o.get("n"):
        t.add_row(f"all, rescaled online (last {o['window']} runs)", _pct(o["median_ape"]), _pct(o["p90_ape"]), str(o["n"]))
        for name, s in o["per_path"].items():
            t.add_row(f"  path {name}, online", _pct(s["median_ape"]), _pct(s["p90_ape"]), str(s["n"]))
    f = m.get("level_floor") or {}
    if f.get("n"):
        t.add_row("all, each primitive's level fitted to its runs", _pct(f["median_ape"]), _pct(f["p90_ape"]),
                  "the floor of any rescale")  # fmt: skip
    d = m.get("drift") or {}
    if d.get("run_spread_p90") is not None:
        t.add_row("single runs around their median", "", _pct(d["run_spread_p90"]), "noise floor")
    e = m.get("measurement") or {}
    if e.get("median_ci_p90") is not None:
        t.add_row("measured medians' ~95% CI half-width", _pct(e["median_ci_median"]), _pct(e["median_ci_p90"]),
                  f"{e['runs_median']:.0f} runs (median)")  # fmt: skip
    for name, moved in (m.get("calibration_speed_spread") or {}).items():
        t.add_row(f"calibration's speed probes, path {name}", _pct(moved), "",
                  "[bold red]unsteady: recalibrate[/]" if moved > UNSTEADY else "spread")  # fmt: skip
    t.add_row("predicate hit rate", _pct(m["hit_rate"]), "", f"{m['decisive_configs']} decisive of {m['configs']}")
    t.add_row("regret", _pct(m["regret"]), "", "")
    return t


def compared_table(results: dict) -> Table:
    """`validate --compare`: each profile's error on the same runs, beside the validated one's."""
    t = Table(title="The same runs priced by other profiles (measurement noise held fixed)")
    paths = list(results["metrics"]["per_path"])
    for col in ("profile", "median APE", "p90 APE", *(f"{p} p90" for p in paths), "hit rate", "regret"):
        t.add_column(col, justify="left" if col == "profile" else "right")
    scored = [(f"{results['profile']['name']} (validated)", results["metrics"])]
    scored += [(label, m) for label, m in results["compared"].items()]
    for label, m in scored:
        if "error" in m:
            t.add_row(label, f"[red]{m['error']}[/]", *[""] * (len(paths) + 3))
            continue
        per = [_pct(m["per_path"].get(p, {}).get("p90_ape")) for p in paths]
        t.add_row(label, _pct(m["median_ape"]), _pct(m["p90_ape"]), *per, _pct(m["hit_rate"]), _pct(m["regret"]))
    return t


def write_csv(rows: list[dict], path: Path) -> Path:
    fields = ["holders", "placement", "path", "primitive", "step_tokens", "rows", "chunk_tokens", "steps", "batch"]
    groups = ["network_s", "compute_s", "merge_s", "total_s"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields + [f"predicted_{g}" for g in groups] + [f"measured_{g}" for g in groups] + ["max_rel_err"])
        for r in rows:
            w.writerow([r.get(k, 1) if k == "batch" else r[k] for k in fields] + [r["predicted"][g] for g in groups] + [r["measured"][g] for g in groups]
                       + [r["max_rel_err"]])  # fmt: skip
    return path


def scatter(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    values = []
    for prim in ("route", "fetch", "local"):
        pts = [(r["measured"]["total_s"] * 1e3, r["predicted"]["total_s"] * 1e3) for r in rows if r["primitive"] == prim]
        if pts:
            ax.scatter(*zip(*pts), label=prim, color=COLORS[prim], alpha=0.8, s=18)
            values += [v for p in pts for v in p]
    lo, hi = min(values), max(values)
    ax.plot([lo * 0.8, hi * 1.25], [lo * 0.8, hi * 1.25], "--", color="gray", linewidth=1, label="y = x")
    for k in (0.9, 1.1):
        ax.plot([lo * 0.8, hi * 1.25], [lo * 0.8 * k, hi * 1.25 * k], ":", color="gray", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)",
           title="Validation: predicted vs measured (dotted: +-10%)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def crossover_map(decisions: list[dict], path: Path) -> Path:
    """Predicted choice (colour) and measured fastest (letter) over rows x chunk tokens, per holders, steps and batch."""
    key = lambda d: (d["holders"], d["steps"], d["path"] or "", d.get("batch", 1))  # noqa: E731
    panels = sorted({key(d) for d in decisions})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (holders, steps, fabric_path, batch) in zip(axes[0], panels):
        cells = [d for d in decisions if key(d) == (holders, steps, fabric_path, batch)]
        xs, ys = sorted({d["rows"] for d in cells}), sorted({d["chunk_tokens"] for d in cells})
        for d in cells:
            x, y = xs.index(d["rows"]), ys.index(d["chunk_tokens"])
            ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color=COLORS[d["predicted"]], alpha=0.55))
            mark = LETTER[d["measured_fastest"]] + ("" if d["predicted"] == d["measured_fastest"] or not d["decisive"] else "!")
            ax.text(x, y, mark, ha="center", va="center", fontsize=11, weight="bold")
        ax.set(xlim=(-0.5, len(xs) - 0.5), ylim=(-0.5, len(ys) - 0.5), xticks=range(len(xs)), yticks=range(len(ys)),
               xlabel="rows per layer (a request's)", ylabel="chunk tokens",
               title=f"{fabric_path}: {holders} holder(s), {steps} step(s)" + (f", batches of {batch}" if batch > 1 else ""))  # fmt: skip
        ax.set_xticklabels(xs)
        ax.set_yticklabels(ys)
    fig.suptitle("Colour: predicted choice (route blue, fetch orange, local green); letter: measured fastest (! = miss)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_validation(results: dict, stem: Path) -> list[Path]:
    """A validation's two plots, STEM-scatter.png and STEM-crossover.png, from its results (as `run_validation` returns
    them or its JSON file holds them: `rows` and `metrics.decisions`)."""
    return [scatter(results["rows"], stem.with_name(f"{stem.name}-scatter.png")),
            crossover_map(results["metrics"]["decisions"], stem.with_name(f"{stem.name}-crossover.png"))]  # fmt: skip


def write_validation(results: dict, out_dir: str | Path, tag: str | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"validation-{tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}"
    data = out / f"{stem}.json"
    write_data(data, results)
    return [data, write_csv(results["rows"], out / f"{stem}.csv"), *plot_validation(results, out / stem)]
