"""Table, files and plots of `qroute simulate`: one simulated workload per policy (and per what-if value).

The results dict (built by `qroute.cli_sim`) holds `cluster` (nodes, GPUs per node, paths, the requester
instances), `workload`, `policies` (`qroute.sim.simulate`'s measurements per policy), `what_if` (None, or
the swept constant and one run per value), `crossover` (the planner's decision shares over two grids,
`crossovers`) and `trace_errors`. The crossover maps are planner queries, not simulations: each cell
plans the workload's request shapes once on a modified profile (a few hundred `planner.plan` calls).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import socket
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from rich.table import Table  # noqa: E402

from qroute.cost.model import PRIMITIVES, CostModel  # noqa: E402
from qroute.planner import HolderDemand, Request, plan  # noqa: E402
from qroute.report.agents import _colors, _pct, _rate, step_cdf  # noqa: E402
from qroute.report.console import fmt_bytes, fmt_s  # noqa: E402
from qroute.report import write_data  # noqa: E402
from qroute.report.plots import COLORS  # noqa: E402

LISTS = ("latency_cdf", "port_utilisation")  # in the JSON file, not in --json
PROBES_S = tuple(float(a) for a in np.logspace(-6, -3, 10))  # 1 us .. 1 ms
RATES_BPS = tuple(float(b) for b in np.logspace(9, 12, 10))  # 1 GB/s .. 1 TB/s
ROWS = tuple(2**k for k in range(14))  # 1 .. 8192 query rows per layer
CHUNK_TOKENS = tuple(64 * 2**k for k in range(11))  # 64 .. 65536 selected tokens
MAX_SHAPES = 16  # planned per map cell: ~250 cells x 16 x ~0.1 ms


# ----------------------------------------------------------------------------- crossover (planner only)


def workload_shapes(requests, layout, heads: int) -> list[dict]:
    """The requests' planning shapes with their share of requests: one per (rows, tokens, steps, offset, sparse),
    a request's whole selection as one holder's demand (the maps are about shapes, not placement); `prefill` is
    the group's mean re-prefill span (a sparse selection rebuilds its chunk up to the last selected block). At
    most `MAX_SHAPES`, the most common (a trace may hold many), their shares renormalised."""
    groups: dict[tuple, list] = {}
    bs = layout.block_size
    for r in requests:
        key = (r.step_tokens * heads, len(r.blocks) * bs, r.steps, r.offset, r.sparse)
        g = groups.setdefault(key, [0, 0])
        g[0] += 1
        g[1] += (max(r.blocks) - layout.first[r.chunk] + 1) * bs
    common = sorted(groups.items(), key=lambda kv: -kv[1][0])[:MAX_SHAPES]
    n = sum(count for _, (count, _) in common)
    return [{"rows": k[0], "tokens": k[1], "steps": k[2], "offset": k[3], "sparse": k[4],
             "prefill": max(k[1], round(total / count)), "weight": count / n}
            for k, (count, total) in common]  # fmt: skip


def decision_shares(model: CostModel, shapes: list[dict], path: str) -> dict[str, float]:
    """Share of requests (weighted by the shapes' `weight`) the planner (the predicate's choice) sends to route /
    fetch / local over `path`."""
    shares = dict.fromkeys(PRIMITIVES, 0.0)
    for s in shapes:
        demand = HolderDemand(0, s["tokens"], (path,), s["prefill"])
        request = Request(s["rows"], model.geometry.layers, (demand,), s["steps"], s["sparse"], s["offset"])
        shares[plan(model, request).holders[0].primitive] += s["weight"]
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def _with_path(model: CostModel, path: str, alpha_s: float, beta_Bps: float) -> CostModel:
    """`model` with `path` replaced by a plain alpha-beta line (no small-message regime, no knots)."""
    profile = model.profile
    spec = replace(profile.path(path), alpha_s=alpha_s, beta_Bps=beta_Bps, small=None, fetch_beta_Bps=None, knots=())
    return replace(model, profile=replace(profile, paths={**profile.paths, path: spec}, provenance="what-if"))


def _grid(kind: str, path: str, x: tuple, y: tuple, cell, current: tuple) -> dict:
    shares = {p: [[0.0] * len(x) for _ in y] for p in PRIMITIVES}  # [y][x]
    for i, yv in enumerate(y):
        for j, xv in enumerate(x):
            for p, v in cell(xv, yv).items():
                shares[p][i][j] = v
    return {"kind": kind, "path": path, "x": list(x), "y": list(y), "shares": shares, "current": list(current)}


def network_crossover(model: CostModel, shapes: list[dict], path: str, probes=PROBES_S, rates=RATES_BPS) -> dict:
    """Decision shares over probe latency (y) x bandwidth (x) of `path`, the workload's shapes as they are."""
    spec = model.profile.path(path)
    cell = lambda b, a: decision_shares(_with_path(model, path, a, b), shapes, path)  # noqa: E731
    return _grid("network", path, tuple(rates), tuple(probes), cell, (spec.beta_Bps, spec.alpha_s))


def shape_crossover(model: CostModel, shapes: list[dict], path: str, rows=ROWS, chunk_tokens=CHUNK_TOKENS) -> dict:
    """Decision shares over rows per layer (y) x selected tokens (x) on the profile as it is; each cell keeps the
    workload's mix of steps, offsets and sparsity (and its re-prefill span relative to the selection)."""

    def cell(tokens, rows):
        moved = [{**s, "rows": rows, "tokens": tokens, "prefill": max(tokens, round(tokens * s["prefill"] / s["tokens"]))}
                 for s in shapes]  # fmt: skip
        return decision_shares(model, moved, path)

    top = max(shapes, key=lambda s: s["weight"])
    return _grid("shape", path, tuple(chunk_tokens), tuple(rows), cell, (top["tokens"], top["rows"]))


def crossovers(model: CostModel, shapes: list[dict], path: str) -> dict:
    return {"network": network_crossover(model, shapes, path), "shape": shape_crossover(model, shapes, path)}


# ----------------------------------------------------------------------------- table and JSON


def _choices(p: dict) -> str:
    c = p.get("choices") or {}
    total = sum(c.get(k, 0) for k in PRIMITIVES) or 1
    return "/".join(f"{100 * c.get(k, 0) / total:.0f}" for k in PRIMITIVES)


def _port_max(p: dict) -> float | None:
    return max((p.get("port_utilisation") or {}).values(), default=None)


def _title(results: dict) -> str:
    c, w, what_if = results["cluster"], results["workload"], results.get("what_if")
    at = f" with {what_if['constant']}={what_if['runs'][0]['value']:g}" if what_if else ""
    return (f"simulate {results['model']} on {results['profile']}{at}: {c['nodes']} node(s) x {c['gpus_per_node']} GPUs, "
            f"{len(c['requesters'])} requesters; {w['requests']:,} requests, {w['session_steps']:,} session-steps; "
            f"cache: hit rate; holder, port: the busiest one's utilisation (* = best throughput)")  # fmt: skip


def policies_table(results: dict, policies: dict | None = None, title: str | None = None) -> Table:
    policies = results["policies"] if policies is None else policies
    t = Table(title=title or _title(results))
    for col in ("policy", "tok/s", "mean", "p99", "route B", "fetch B", "r/f/l %", "cache", "holder", "port", "vs best"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    best = max((p.get("throughput") or 0.0 for p in policies.values()), default=0.0)
    for name, p in policies.items():
        rate, nbytes = p.get("throughput") or 0.0, p.get("bytes") or {}
        t.add_row(name + (" *" if best > 0 and rate == best else ""), _rate(rate), fmt_s(p.get("mean_s")),
                  fmt_s(p.get("p99_s")), fmt_bytes(nbytes.get("route")), fmt_bytes(nbytes.get("fetch")), _choices(p),
                  _pct(p.get("cache_hit_rate")), _pct(p.get("holder_utilisation_max")), _pct(_port_max(p)),
                  f"{rate / best:.2f}x" if best > 0 else "-")  # fmt: skip
    return t


def what_if_table(results: dict) -> Table | None:
    """One row per (swept value, policy): throughput, p99, the busiest holder; None without a what-if."""
    w = results.get("what_if")
    if not w:
        return None
    t = Table(title=f"what-if {w['constant']} (profile {results['profile']})")
    for col in ("value", "policy", "tok/s", "mean", "p99", "busiest holder", "r/f/l %"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for run in w["runs"]:
        for name, p in run["policies"].items():
            t.add_row(f"{run['value']:g}", name, _rate(p.get("throughput")), fmt_s(p.get("mean_s")), fmt_s(p.get("p99_s")),
                      _pct(p.get("holder_utilisation_max")), _choices(p))  # fmt: skip
    return t


def lean_policies(policies: dict) -> dict:
    """Per policy without its long lists (CDF, per-port map), with the busiest port."""
    return {n: {**{k: v for k, v in p.items() if k not in LISTS}, "port_utilisation_max": _port_max(p)}
            for n, p in policies.items()}  # fmt: skip


def summary_json(results: dict) -> dict:
    """What `--json` prints (the caller adds "files"): per policy without the CDF and per-port maps; what-if runs alike."""
    w = results.get("what_if")
    what_if = None if not w else {**w, "runs": [{**r, "policies": lean_policies(r["policies"])} for r in w["runs"]]}
    keys = ("profile", "model", "cluster", "workload", "trace_errors", "wall_s")
    return {**{k: results.get(k) for k in keys}, "policies": lean_policies(results["policies"]), "what_if": what_if}


# ----------------------------------------------------------------------------- files


CSV_FIELDS = ("throughput", "mean_s", "p50_s", "p99_s", "max_s", "makespan_s", "tokens", "session_steps", "cache_hit_rate",
              "holder_utilisation_max", "wall_s")  # fmt: skip


def _runs(results: dict) -> list[tuple[float | None, dict]]:
    w = results.get("what_if")
    return [(r["value"], r["policies"]) for r in w["runs"]] if w else [(None, results["policies"])]


def write_csv(results: dict, path: Path) -> Path:
    """One row per (what-if value, policy): the scalars, bytes and choices per primitive, the busiest port."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["what_if_value", "policy", *CSV_FIELDS, "bytes_route", "bytes_fetch",
                    *(f"choices_{k}" for k in (*PRIMITIVES, "cache")), "port_utilisation_max"])  # fmt: skip
        for value, policies in _runs(results):
            for name, p in policies.items():
                c, b = p.get("choices") or {}, p.get("bytes") or {}
                row = [value, name, *(p.get(k) for k in CSV_FIELDS), b.get("route"), b.get("fetch"),
                       *(c.get(k) for k in (*PRIMITIVES, "cache")), _port_max(p)]  # fmt: skip
                w.writerow(["" if v is None else v for v in row])
    return path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdf(policies: dict, path: Path) -> Path:
    """Fraction of session-steps done within x, per policy, from the simulator's log-binned histogram (log x, ms)."""
    curves = {name: [(s * 1e3, f) for s, f in p.get("latency_cdf") or [] if s > 0] for name, p in policies.items()}
    p99 = {name: p.get("p99_s") for name, p in policies.items()}
    return step_cdf(curves, p99, path, "Simulated step latency CDF", "no session-steps simulated", styles=True)


def _instance_grid(cluster: dict, values: dict[int, float]) -> np.ndarray:
    grid = np.full((cluster["nodes"], cluster["gpus_per_node"]), np.nan)
    for i, v in values.items():
        grid[divmod(i, cluster["gpus_per_node"])] = v
    return grid


def utilisation_maps(results: dict, path: Path, kind: str = "holder") -> Path:
    """Busy fraction per instance laid out nodes (rows) x GPUs (columns): one panel per policy (`holder`: the
    holders' compute), or per policy and path (`link`: each instance's port on that path). R marks requesters."""
    cluster, policies = results["cluster"], results["policies"]
    columns = ["holders"] if kind == "holder" else list(cluster["paths"])
    nodes, gpus = cluster["nodes"], cluster["gpus_per_node"]
    w, h = max(3.2, 0.55 * gpus + 1.4), max(2.0, 0.3 * nodes + 1.3)
    fig, axes = plt.subplots(len(policies), len(columns), figsize=(w * len(columns) + 1.2, h * len(policies)),
                             squeeze=False, layout="constrained")  # fmt: skip
    image, label = None, nodes * gpus <= 64
    for row, (name, p) in enumerate(policies.items()):
        for col, column in enumerate(columns):
            if kind == "holder":
                values = {int(k): v for k, v in (p.get("holder_utilisation") or {}).items()}
            else:
                ports = (k.rsplit(":", 1) for k in p.get("port_utilisation") or {})
                values = {int(i): p["port_utilisation"][f"{i}:{q}"] for i, q in ports if q == column}
            grid, ax = _instance_grid(cluster, values), axes[row][col]
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto", interpolation="nearest")
            for r in cluster["requesters"]:
                ax.text(r % gpus, r // gpus, "R", ha="center", va="center", color="tab:cyan", fontsize=7)
            if label:
                for (n, g), v in np.ndenumerate(grid):
                    if not math.isnan(v) and n * gpus + g not in cluster["requesters"]:
                        ax.text(g, n, f"{v:.0%}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
            ax.set_title(f"{name}: {column}", fontsize=8)
            ax.set_xticks(*_ticks(list(range(gpus)), str), fontsize=7)
            ax.set_yticks(*_ticks(list(range(nodes)), str), fontsize=7)
            ax.set_xlabel("GPU", fontsize=8)
            ax.set_ylabel("node", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=min(1.0, 3.0 / len(policies)), label="busy fraction")
    fig.suptitle(f"{'Holder compute' if kind == 'holder' else 'Port (link)'} utilisation", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ticks(values: list, fmt) -> tuple[list[int], list[str]]:
    step = max(1, len(values) // 6)
    idx = list(range(0, len(values), step))
    return idx, [fmt(values[i]) for i in idx]


def _log_index(values: list, v: float) -> float:
    return float(np.interp(math.log(v), [math.log(x) for x in values], range(len(values))))


def crossover_map(crossover: dict, path: Path) -> Path:
    """Share of requests planned as route / fetch / local (one panel each) over the map's grid; * = the profile's
    (network) or the workload's commonest (shape) point."""
    network = crossover["kind"] == "network"
    x, y = crossover["x"], crossover["y"]
    xfmt = (lambda b: f"{b / 1e12:.3g} TB/s" if b >= 1e12 else f"{fmt_bytes(b)}/s") if network else (lambda t: f"{t:g}")
    yfmt = fmt_s if network else (lambda r: f"{r:g}")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), sharey=True, layout="constrained")
    for ax, prim in zip(axes, PRIMITIVES):
        image = ax.imshow(crossover["shares"][prim], vmin=0, vmax=1, origin="lower", aspect="auto", cmap="Blues")
        cx, cy = crossover["current"]
        if min(x) <= cx <= max(x) and min(y) <= cy <= max(y):
            ax.plot(_log_index(x, cx), _log_index(y, cy), marker="*", color=COLORS.get(prim, "red"), markersize=14,
                    markeredgecolor="black")  # fmt: skip
        ax.set_xticks(*_ticks(x, xfmt), rotation=30, fontsize=7)
        ax.set_title(f"{prim} share", color=COLORS.get(prim, "black"))
        ax.set_xlabel(f"{crossover['path']} bandwidth" if network else "selected tokens per request")
    axes[0].set_yticks(*_ticks(y, yfmt), fontsize=7)
    axes[0].set_ylabel(f"{crossover['path']} probe latency" if network else "query rows per layer")
    fig.colorbar(image, ax=list(axes), label="share of requests")
    what = "probe latency x bandwidth" if network else "rows x chunk tokens"
    fig.suptitle(f"Planner decisions over {what} (the workload's request shapes)", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def what_if_plot(what_if: dict, path: Path) -> Path:
    """Throughput, step latency (p99 solid, p50 dashed) and the busiest holder against the swept value, per policy."""
    values, runs = [r["value"] for r in what_if["runs"]], what_if["runs"]
    names = list(runs[0]["policies"])
    palette = _colors(names)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = ((("throughput", "-"),), (("p99_s", "-"), ("p50_s", "--")), (("holder_utilisation_max", "-"),))
    labels = ("throughput (tok/s)", "step latency (ms): p99 solid, p50 dashed", "busiest holder (busy fraction)")
    for ax, keys, label in zip(axes, panels, labels):
        for (key, style), name in ((k, n) for k in keys for n in names):
            scale = 1e3 if key.endswith("_s") else 1.0
            ys = [(r["policies"][name].get(key) or 0.0) * scale for r in runs]
            ax.plot(values, ys, marker="o", linestyle=style, color=palette[name], label=name if style == "-" else None)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(values) / min(values) > 10:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=what_if["constant"], ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"What-if: {what_if['constant']}", fontsize=10)
    return _save(fig, path)


def write_sim(results: dict, out_dir: str | Path, tag: str | None = None) -> list[Path]:
    """`sim-<tag>-<date>.json` (everything), `.csv`, `-latency-cdf.png`, `-holder-util.png`, `-link-util.png`,
    `-crossover-network.png` and `-crossover-shape.png` (when computed) and `-what-if.png` (with a what-if)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sim-{tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}"
    data = Path(f"{stem}.json")
    write_data(data, results)
    files = [data, write_csv(results, Path(f"{stem}.csv")), latency_cdf(results["policies"], Path(f"{stem}-latency-cdf.png")),
             utilisation_maps(results, Path(f"{stem}-holder-util.png"), "holder"),
             utilisation_maps(results, Path(f"{stem}-link-util.png"), "link")]  # fmt: skip
    for kind, c in (results.get("crossover") or {}).items():
        files.append(crossover_map(c, Path(f"{stem}-crossover-{kind}.png")))
    if results.get("what_if"):
        files.append(what_if_plot(results["what_if"], Path(f"{stem}-what-if.png")))
    return files
