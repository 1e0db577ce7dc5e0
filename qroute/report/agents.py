"""Table, files and plots of `qroute bench-agents`: one agentic workload under several planning policies.

The results dict (rank 0) holds `workload` (requests, agents, skew) and `policies`, one entry per policy with
throughput, latency percentiles, exactness spot checks, bytes per primitive, holder demands served each way,
cache counters (or None), holder utilisation, every session-step latency and the cache hit rate over time.
"""

from __future__ import annotations

import csv
import datetime as dt
import socket
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
from rich.table import Table  # noqa: E402

from qroute.report import write_data  # noqa: E402
from qroute.report.console import fmt_bytes, fmt_s  # noqa: E402
from qroute.report.plots import COLORS  # noqa: E402

LISTS = ("step_latencies_s", "hit_rate_over_time")  # long per-step series: in the JSON file, not in --json
PRIMITIVES = ("route", "fetch", "local", "cache")  # column order; other keys follow, sorted
SCALARS = ("throughput", "p50_s", "p99_s", "mean_s", "wall_s", "tokens", "requests", "exact", "max_rel_err", "checked")
CACHE_FIELDS = ("hits", "misses", "hit_rate", "evictions", "capacity_blocks")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _rate(tok_per_s: float | None) -> str:
    if tok_per_s is None:
        return "-"
    return f"{tok_per_s:,.0f}" if abs(tok_per_s) >= 100 else f"{tok_per_s:.3g}"


def _hit_rate(p: dict) -> float | None:
    return (p.get("cache") or {}).get("hit_rate")


def _max_util(p: dict) -> float | None:
    util = p.get("holder_utilisation") or {}
    return max(util.values()) if util else None


def _best(policies: dict) -> float:
    """The highest throughput over all policies (0 when none decoded anything)."""
    return max((p.get("throughput") or 0.0 for p in policies.values()), default=0.0)


def _keys(policies: dict, field: str) -> list[str]:
    """Primitive names present under `field` ("bytes" or "choices") in any policy, known ones first."""
    seen = {k for p in policies.values() for k in (p.get(field) or {})}
    return [k for k in PRIMITIVES if k in seen] + sorted(seen - set(PRIMITIVES))


def _colors(names) -> dict[str, str]:
    """A policy named like a primitive keeps that primitive's colour; the others take spare tab10 colours in order."""
    spare = iter(f"tab:{c}" for c in ("red", "brown", "pink", "gray", "olive", "cyan"))
    palette = {}
    for name in names:
        palette[name] = COLORS.get(name) or COLORS.get(name.removeprefix("always-")) or next(spare, "black")
    return palette


def policies_table(results: dict) -> Table:
    w, policies = results["workload"], results["policies"]
    top10 = (w.get("skew") or {}).get("top10_share")
    host = (results.get("machine") or {}).get("host", "?")
    t = Table(title=f"bench-agents on {host}: {w['requests']} requests from {w['agents']} agents, "
                    f"skew: top-10% share {_pct(top10)} (* = best throughput)")  # fmt: skip
    for col in ("policy", "tok/s", "p50", "p99", "bytes route", "bytes fetch", "cache hit rate", "max holder util",
                "exact (max rel err)", "vs best"):  # fmt: skip
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col in ("policy", "exact (max rel err)"))
    best = _best(policies)
    for name, p in policies.items():
        rate = p.get("throughput") or 0.0
        nbytes = p.get("bytes") or {}
        err = p.get("max_rel_err")
        exact = f"{'yes' if p.get('exact') else 'NO'} ({'-' if err is None else f'{err:.1e}'})"
        t.add_row(name + (" *" if best > 0 and rate == best else ""), _rate(p.get("throughput")), fmt_s(p.get("p50_s")),
                  fmt_s(p.get("p99_s")), fmt_bytes(nbytes.get("route")), fmt_bytes(nbytes.get("fetch")),
                  _pct(_hit_rate(p)), _pct(_max_util(p)), exact, f"{rate / best:.2f}x" if best > 0 else "-")  # fmt: skip
    return t


def summary_json(results: dict) -> dict:
    """What `--json` prints: every policy without its per-step lists, and the workload (the caller adds "files")."""
    policies = {name: {k: v for k, v in p.items() if k not in LISTS} for name, p in results["policies"].items()}
    return {"policies": policies, "workload": results["workload"]}


def write_csv(policies: dict, path: Path) -> Path:
    """One row per policy: the scalars, bytes and choices per primitive, cache counters, holder utilisation."""
    prims, ways = _keys(policies, "bytes"), _keys(policies, "choices")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", *SCALARS, *(f"bytes_{k}" for k in prims), *(f"choices_{k}" for k in ways),
                    *(f"cache_{k}" for k in CACHE_FIELDS), "holder_utilisation_max", "holder_utilisation_mean"])  # fmt: skip
        for name, p in policies.items():
            cache, util = p.get("cache") or {}, list((p.get("holder_utilisation") or {}).values())
            mean_util = sum(util) / len(util) if util else None
            row = [name, *(p.get(k) for k in SCALARS), *((p.get("bytes") or {}).get(k) for k in prims),
                   *((p.get("choices") or {}).get(k) for k in ways), *(cache.get(k) for k in CACHE_FIELDS),
                   _max_util(p), mean_util]  # fmt: skip
            w.writerow(["" if v is None else v for v in row])
    return path


def latency_cdf(policies: dict, path: Path) -> Path:
    """Fraction of session steps done within x, per policy (log x, milliseconds)."""
    curves = {}
    for name, p in policies.items():
        xs = sorted(s * 1e3 for s in p.get("step_latencies_s") or [] if s and s > 0)  # log x: drop zeros
        curves[name] = [(x, (i + 1) / len(xs)) for i, x in enumerate(xs)]
    p99 = {name: p.get("p99_s") for name, p in policies.items()}
    return step_cdf(curves, p99, path, "Step latency CDF per policy", "no step latencies recorded")


def step_cdf(curves: dict, p99: dict, path: Path, title: str, empty: str, styles: bool = False) -> Path:
    """Step CDFs per policy (`curves`: name -> [(ms, fraction)]), log x, coloured like the primitives; `styles`: also
    a line style per policy, so that curves which coincide stay visible."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    palette, plotted = _colors(curves), False
    for i, (name, pts) in enumerate(curves.items()):
        if pts:
            ax.step(*zip(*pts), where="post", color=palette[name], linestyle=("-", "--", ":", "-.")[i % 4] if styles else "-",
                    label=f"{name} (p99 {fmt_s(p99.get(name))})")  # fmt: skip
            plotted = True
    if plotted:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="session-step latency (ms)", ylabel="fraction of steps", ylim=(0, 1.02), title=title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bytes_bars(policies: dict, path: Path) -> Path:
    """Bytes moved per primitive (bars, coloured by primitive) grouped by policy; log y, as they differ by orders."""
    names, prims = list(policies), _keys(policies, "bytes")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 4.5))
    width, smallest = 0.8 / max(len(prims), 1), None
    for j, prim in enumerate(prims):
        values = [(policies[n].get("bytes") or {}).get(prim) or 0 for n in names]
        x = [i + (j - (len(prims) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(x, values, width, label=prim, color=COLORS.get(prim, "tab:gray"), edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, [fmt_bytes(v) if v > 0 else "" for v in values], fontsize=7, padding=2)
        for xi, v in zip(x, values):
            if v <= 0:  # no bar on a log axis: say so at the bottom
                ax.annotate("0", (xi, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7)
        smallest = min([v for v in values if v > 0] + ([smallest] if smallest else []), default=None)
    if smallest:  # a decade of room under the smallest bar, so it reads as a bar
        ax.set_yscale("log")
        ax.set_ylim(bottom=smallest / 10)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("bytes moved")
    ax.set_title("Bytes moved per primitive, by policy")
    if prims:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def hit_rate_plot(policies: dict, path: Path) -> Path | None:
    """Cache hit rate over time per policy that recorded one; None (no file) when none did."""
    series = {}
    for name, p in policies.items():
        pts = [(t, r) for t, r in p.get("hit_rate_over_time") or [] if r is not None]
        if pts:
            series[name] = pts
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    palette = _colors(policies)
    for name, pts in series.items():
        ax.plot(*zip(*pts), color=palette[name], marker=".", label=name)
    ax.set(xlabel="time since start (s)", ylabel="cache hit rate", ylim=(0, 1.02), title="Cache hit rate over time")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_agents(results: dict, out_dir: str | Path, tag: str | None = None) -> list[Path]:
    """`agents-<tag>-<date>.json` (everything, step latencies kept), `.csv`, `-latency-cdf.png`, `-bytes.png`,
    and `-hit-rate.png` when some policy recorded a hit rate over time."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"agents-{tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}"
    policies = results["policies"]
    data = out / f"{stem}.json"
    write_data(data, results)
    files = [data, write_csv(policies, out / f"{stem}.csv"), latency_cdf(policies, out / f"{stem}-latency-cdf.png"),
             bytes_bars(policies, out / f"{stem}-bytes.png"), hit_rate_plot(policies, out / f"{stem}-hit-rate.png")]  # fmt: skip
    return [f for f in files if f is not None]
