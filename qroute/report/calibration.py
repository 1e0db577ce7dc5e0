"""Tables and files of `qroute calibrate` (OSU-style sweep tables, fit summary)."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

from rich.table import Table

from qroute.calibration.fit import UNSTEADY
from qroute.cost.profile import stem as profile_stem
from qroute.report import write_data
from qroute.report.console import fmt_bytes, fmt_s


def latency_table(sweep: list[dict], path: str) -> Table:
    t = Table(title=f"# qroute ping-pong latency ({path}), OSU style: one-way = round trip / 2")
    for col in ("size", "one-way (us)", "round trip median", "p10", "p90", "n"):
        t.add_column(col, justify="right")
    for r in sweep:
        t.add_row(fmt_bytes(r["size"]), f"{r['median_s'] / 2 * 1e6:.2f}", fmt_s(r["median_s"]), fmt_s(r["p10_s"]),
                  fmt_s(r["p90_s"]), str(r["n"]))  # fmt: skip
    return t


def bandwidth_table(rows: list[dict], path: str) -> Table:
    t = Table(title=f"# qroute streaming bandwidth ({path}), OSU style: window of 16 messages")
    for col in ("size", "MB/s (median)", "p10", "p90"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(fmt_bytes(r["size"]), f"{r['MBps']:.1f}", f"{r['MBps_p10']:.1f}", f"{r['MBps_p90']:.1f}")
    return t


def fit_table(results: dict) -> Table:
    profile = results["profile"]
    t = Table(title=f"Profile {profile['name']}: fitted constants (median / p90 relative residual of the fit)")
    for col in ("constant", "value", "fit median APE", "fit p90 / max APE"):
        t.add_column(col, justify="left" if col == "constant" else "right")
    for name, path in profile["paths"].items():
        fit = profile["fits"]["path"][name][-1]
        t.add_row(f"{name} alpha", fmt_s(path["alpha_s"]), f"{fit['median_ape']:.1%}", f"{fit['p90_ape']:.1%}")
        t.add_row(f"{name} beta", f"{path['beta_Bps'] / 1e9:.3g} GB/s", "", "")
        if path.get("small"):
            s = path["small"]
            t.add_row(f"{name} small (< {fmt_bytes(s['below_bytes'])})", f"{fmt_s(s['alpha_s'])}, {s['beta_Bps'] / 1e9:.3g} GB/s", "", "")
        if path.get("knots"):  # the route exchanges' own medians, interpolated
            t.add_row(f"{name} route knots", ", ".join(f"{fmt_bytes(b)} {fmt_s(x)}" for b, x in path["knots"]), "", "")
        t.add_row(f"{name} wake-up, per extra holder", f"{fmt_s(path.get('cold_s', 0))}, {fmt_s(path.get('per_holder_s', 0))}"
                  f" (+{path.get('holder_serial', 0):.0%} of their compute{_cap(path)}, {path.get('bytes_serial', 1):.0%} of their bytes)",
                  "", "")  # fmt: skip
        if path.get("cold_idle"):  # the wake-up against the holder's idle time
            t.add_row(f"{name} wake-up after idle", idle_points(path["cold_idle"], fmt_s), "", "")
        t.add_row(f"{name} fetch offset", fmt_s(path.get("fetch_offset_s", 0)), "", "")
        if path.get("fetch_beta_Bps"):  # the fetches on a line of their own
            chunks = f", {fmt_s(path['chunk_s'])} per {fmt_bytes(path['chunk_bytes'])} chunk beyond the first" if path.get("chunk_s") else ""
            t.add_row(f"{name} fetch rate", f"{path['fetch_beta_Bps'] / 1e9:.3g} GB/s{chunks}", "", "")
        t.add_row(f"{name} stalls (1 holder; several)", f"{_stalls(path, '')} of {fmt_s(path.get('stall_s', 0))}; "
                  f"{_stalls(path, '_multi')} of {fmt_s(path.get('stall_s_multi', 0))}", "", "")  # fmt: skip
        sp = results["spread"][name]
        if sp["repeats"] > 1:
            shares = ", each on a share of the shapes" if sp.get("shares") else ""
            t.add_row(f"{name} repeat spread ({sp['repeats']} runs{shares})", f"alpha {sp['alpha_rel_spread']:.1%}, beta {sp['beta_rel_spread']:.1%}, predicted exchange "
                      f"{sp.get('time_rel_spread', 0):.1%}" + (f" ({sp['time_rel_spread_at_speed']:.1%} at one speed)"
                      if sp.get("time_rel_spread_at_speed") is not None else ""), "", "")
        if sp.get("speed_rel_spread") is not None:
            moved = sp["speed_rel_spread"]
            t.add_row(f"{name} speed probes' spread", f"{moved:.1%}" + (" [bold red](unsteady)[/]" if moved > UNSTEADY else ""), "", "")
        ping = profile["fits"]["pingpong"][name]
        t.add_row(f"{name} ping-pong line (fabric alone)", f"{fmt_s(ping['alpha_s'])}, {ping['beta_Bps'] / 1e9:.3g} GB/s",
                  f"{ping['median_ape']:.1%}", f"{ping['p90_ape']:.1%}")  # fmt: skip
    for name, fit in profile["fits"].items():
        if name in profile["compute"]:
            t.add_row(name, _compute_value(profile["compute"][name]), f"{fit['median_ape']:.1%}", f"{fit['max_ape']:.1%}")
    return t


def flips_table(results: dict) -> Table:
    t = Table(title="Which path is cheaper, by exchange size (bytes out + back): the profile vs the measured sweep")
    for col in ("paths", "profile flips at", "measured flips between", "measured winners (small to large)"):
        t.add_column(col)
    for f in results["flips"]:
        predicted = ", ".join(fmt_bytes(x) for x in f["predicted_bytes"]) or "never"
        measured = ", ".join(f"{fmt_bytes(a)} and {fmt_bytes(b)}" for a, b in f["measured_between_bytes"]) or "never"
        winners = []
        for w in f["measured_winners"]:
            if not winners or winners[-1] != w:
                winners.append(w)
        t.add_row(f"{f['a']} vs {f['b']}", predicted, measured, " -> ".join(winners))
    return t


def _stalls(path: dict, cls: str) -> str:
    """How often a class of route exchanges stalls: per exchange (profile/10), per second of exchange (older), or
    both (profile/13: a share growing with the exchange's seconds)."""
    per, rate = path.get(f"stall_per_exchange{cls}"), path.get(f"stall_rate{cls}", 0)
    if per is None:
        return f"{rate:.3g}/s"
    return f"{per:.1%} of exchanges" + (f" + {rate * 1e-3:.1%} per ms" if rate else "")


def _compute_value(c: dict) -> str:
    parts = []
    for key, value in c.items():
        if key == "source":
            continue
        if key == "first_step_idle":  # (idle seconds, relative extra) points
            parts.append(f"first step after idle {idle_points(value, lambda v: f'+{v:.0%}')}")
            continue
        is_time = key.endswith("_s") and not key.endswith("per_s")
        parts.append(f"{key}={fmt_s(value)}" if is_time else f"{key}={value:.3g}")
    return ", ".join(parts)


START_PHASES = ("launch", "holders_ready", "sweeps")  # `phase_s` keys outside the training passes
END_PHASES = ("fits", "stop")


def phase_text(phase_s: dict[str, float]) -> str:
    """Where a calibration's seconds went, one line: the start, the sweeps, the training passes (their largest parts
    named) and the fits, from the results' `phase_s` (empty where there is none: a host-tier calibration's start)."""
    if not phase_s:
        return ""
    training = {k: v for k, v in phase_s.items() if k not in START_PHASES + END_PHASES}
    top = sorted(training, key=training.get, reverse=True)[:3]
    names = {"holders_ready": "holders' prefill"}
    parts = [f"{names.get(k, k)} {phase_s[k]:.1f}" for k in START_PHASES if k in phase_s]
    parts.append(f"training {sum(training.values()):.1f} (" + ", ".join(f"{k.replace('_', ' ')} {training[k]:.1f}" for k in top) + ")")
    parts += [f"{k} {phase_s[k]:.1f}" for k in END_PHASES if k in phase_s]
    return "seconds: " + ", ".join(parts)


def write_calibration(results: dict, out_dir: str | Path, tag: str | None = None) -> list[Path]:
    """`profile-<tag>-<date>.json` (the profile alone, loadable with --profile) and `calibration-<tag>-<date>.json`;
    with a raw trace in the results (`calibrate --keep-trace`), that apart in `trace-<tag>-<date>.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{tag or socket.gethostname()}-{dt.date.today():%Y-%m-%d}"
    profile = out / f"profile-{stem}.json"
    profile.write_text(json.dumps(results["profile"], indent=2) + "\n")
    full = out / f"calibration-{stem}.json"
    write_data(full, {k: v for k, v in results.items() if k != "trace"})
    if "trace" not in results:
        return [profile, full]
    trace = out / f"trace-{stem}.json"
    trace.write_text(json.dumps(results["trace"], default=str) + "\n")
    return [profile, full, trace]


def short_labels(names: list[str]) -> list[str]:
    """Column labels for profiles: file stems less the dash-separated words they all start and end with
    (`profile-h100-repeat1-2026-11-26.json`, `...-repeat2-...` -> `repeat1`, `repeat2`); the stems where that leaves
    a label empty or two alike."""
    stems = [profile_stem(n) for n in names]
    words = [s.split("-") for s in stems]
    head = 0
    while all(len(w) > head + 1 for w in words) and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while all(len(w) > head + tail + 1 for w in words) and len({w[-1 - tail] for w in words}) == 1:
        tail += 1
    labels = ["-".join(w[head : len(w) - tail]) for w in words]
    return labels if all(labels) and len(set(labels)) == len(labels) else stems


_COMPARED = {"alpha_s": ("alpha", fmt_s), "beta_Bps": ("beta", lambda v: f"{v / 1e9:.3g} GB/s"),
             "cold_s": ("wake-up", fmt_s), "per_holder_s": ("per extra holder", fmt_s),
             "holder_serial": ("holders' compute serial", lambda v: f"{v:.0%}"),
             "bytes_serial": ("holders' bytes serial", lambda v: f"{v:.0%}"), "fetch_offset_s": ("fetch offset", fmt_s),
             "stall_rate_multi": ("stalls per s (holders)", lambda v: f"{v:.3g}"),
             "stall_per_exchange_multi": ("stalls per exchange (holders)", lambda v: f"{v:.1%}"),
             "stall_s_multi": ("stall (holders)", fmt_s)}  # fmt: skip
_CHECKED = ("alpha_s", "beta_Bps")  # with the exchange times: what `agree` looks at


def compare_table(result: dict) -> Table:
    """`qroute compare`: per path, each profile's constants and exchange times side by side, with their spread."""
    tol = result["tolerance"]
    t = Table(title=f"Profiles compared: values and spread (max - min) / median; over {tol:.0%} in red where it counts")
    t.add_column("path: quantity")
    for label in short_labels(result["profiles"]):
        t.add_column(label, justify="right")
    t.add_column("spread", justify="right")

    def row(label: str, entry: dict | None, fmt, checked: bool) -> None:
        if entry is None:
            return
        spread = entry["rel_spread"]
        text = "-" if spread is None else f"{spread:.1%}"
        if checked and (spread is None or spread > tol):
            text = f"[bold red]{text}[/]"
        t.add_row(label, *(fmt(v) for v in entry["values"]), text)

    for path, r in result["paths"].items():
        for key, (label, fmt) in _COMPARED.items():
            row(f"{path}: {label}", r["constants"].get(key), fmt, key in _CHECKED)
        for size, entry in r["exchange_s"].items():
            row(f"{path}: exchange of {fmt_bytes(int(size))}", entry, fmt_s, True)
        row(f"{path}: route speed probe", r["route_probe_s"], fmt_s, False)
        row(f"{path}: alpha / probe", r["alpha_per_probe"], lambda v: f"{v:.3f}", False)
        t.add_row(f"{path}: agree within {tol:.0%}", *("" for _ in result["profiles"]), "yes" if r["agree"] else "[bold red]no[/]")
    return t


def idle_points(points, fmt) -> str:
    """Measured (idle seconds, value) points as 'after 11 ms: 66 us, ...'."""
    return ", ".join(f"{fmt_s(t)}: {fmt(v)}" for t, v in points)


def _cap(path: dict) -> str:
    """`serial_cap_s` as the fit table shows it: up to that much of each other holder's compute."""
    cap = path.get("serial_cap_s")
    return "" if cap is None else f" up to {fmt_s(cap)} each"

