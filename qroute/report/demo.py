"""The demo's table and its result files (JSON and PNG plots)."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

from rich.table import Table

from qroute.report import plots, write_data
from qroute.report.console import fmt_s

LABELS = {"predicate": "predicate", "route": "always-route", "fetch": "always-fetch", "local": "always-local"}


def summary_table(results: dict) -> Table:
    cfg, corpus = results["config"], results["corpus"]
    title = (
        f"{cfg['cluster']['world_size']} instances, {results['model']['name']} ({results['model']['layers']} layers), "
        f"{corpus['blocks']} blocks of {corpus['block_size']} tokens, profile {results['profile']['name']}"
        + (" rescaled online" if cfg.get("online") else "")
    )
    t = Table(title=title)
    for col in ("mode", "holder choices", "predicted", "measured", "error", "vs always-fetch", "exact (max rel err)"):
        t.add_column(col, justify="left" if col in ("mode", "holder choices") else "right")
    for mode, m in results["summary"].items():
        choices = ", ".join(f"{k} {v}" for k, v in sorted(m["choices"].items())) or "-"
        error = "-" if m["error"] is None else f"{m['error']:+.0%}"
        speed = "-" if m["speedup_vs_fetch"] is None else f"{m['speedup_vs_fetch']:.2f}x"
        exact = f"{'yes' if m['exact'] else 'NO'} ({m['max_rel_err']:.1e})"
        t.add_row(LABELS[mode], choices, fmt_s(m["predicted_s"]), fmt_s(m["measured_s"]), error, speed, exact)
    return t


def write_results(results: dict, out_dir: str | Path, tag: str | None = None) -> list[Path]:
    """`demo-<tag or host>-<date>.json` and the plots, under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"demo-{tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}"
    data = out / f"{stem}.json"
    write_data(data, results)
    return [
        data,
        plots.predicted_vs_measured(results, out / f"{stem}-predicted-vs-measured.png"),
        plots.phase_bars(results, out / f"{stem}-phases.png"),
    ]
