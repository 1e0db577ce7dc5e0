"""`qroute validate`'s metrics: pure functions of the validation rows (each configuration's measured runs beside its
prediction). See `validate`'s module doc for what each one means."""

from __future__ import annotations

import math
from statistics import median

import numpy as np

from qroute.cost.online import online_predictions

GROUPS = ("network_s", "compute_s", "merge_s", "total_s")
ONLINE_WINDOW = 16  # runs of one primitive an online-rescaled profile learns from


def median_ci(x: list[float]) -> float:
    """Half-width of a distribution-free ~95% confidence interval of the median of `x`, relative to the median: the
    order statistics n/2 -/+ sqrt(n) (the binomial's normal approximation; with 5 runs, the extremes). inf below 3."""
    n = len(x)
    if n < 3:
        return float("inf")
    v, half = sorted(x), math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    mid = median(v)
    return (v[hi] - v[lo]) / 2 / mid if mid > 0 else float("inf")


def drift(rows: list[dict]) -> dict:
    """How the machine's speed moved between passes: per pass, the median over configurations of that pass's run
    over the configuration's median (1.0 = no drift), and the spread of single runs around their medians."""
    runs = [r["measured_runs"] for r in rows if r.get("measured_runs") and r["measured"]["total_s"] > 0]
    if not runs:
        return {"pass_speed": [], "run_spread_p90": None}
    passes = min(len(x) for x in runs)
    ratios = np.array([[x[i] / r["measured"]["total_s"] for i in range(passes)] for r, x in zip(rows, runs)])
    return {"pass_speed": [float(v) for v in np.median(ratios, axis=0)],
            "run_spread_p90": float(np.percentile(np.abs(ratios - 1), 90))}  # fmt: skip


# ----------------------------------------------------------------------------- metrics (pure)


def _ape(row: dict, group: str = "total_s") -> float | None:
    m = row["measured"][group]
    return None if m <= 0 else abs(row["predicted"][group] - m) / m


def _corrected_ape(row: dict) -> float | None:
    """APE against the median of the runs each divided by the speed probe's factor at its pass (host drift
    between calibration and this run taken out); None without probe factors."""
    speed = row.get("speed")
    if not speed or row["measured"]["total_s"] <= 0:
        return None
    m = median(t / f for t, f in zip(row["measured_runs"], speed))
    return abs(row["predicted"]["total_s"] - m) / m


def online(rows: list[dict], window: int = ONLINE_WINDOW) -> dict:
    """APE of the predictions an online-rescaled profile (`cost.online`) would have made: each setup and path's runs
    replayed in the order they ran, each predicted from the `window` runs of the same primitive before it; per
    configuration the median of its runs' predictions against the median measured. Empty without run records."""
    streams: dict[tuple, list[tuple[int, dict, int]]] = {}
    for r in rows:
        for j, order in enumerate(r.get("run_order") or []):
            streams.setdefault((r["holders"], r.get("pass")), []).append((order, r, j))
    if not streams:
        return {}
    predicted: dict[int, list[float]] = {}
    for runs in streams.values():
        runs.sort(key=lambda x: x[0])
        replay = [(r["primitive"], r["predicted"], r["measured_phases"][j]) for _, r, j in runs]
        for (_, r, _), p in zip(runs, online_predictions(replay, window)):
            predicted.setdefault(id(r), []).append(p["total_s"])
    apes = {id(r): abs(median(predicted[id(r)]) - r["measured"]["total_s"]) / r["measured"]["total_s"]
            for r in rows if id(r) in predicted and r["measured"]["total_s"] > 0}  # fmt: skip
    by = lambda key: {v: _summary([apes[id(r)] for r in rows if r[key] == v and id(r) in apes])  # noqa: E731
                      for v in sorted({r[key] for r in rows if r[key]}, key=str)}  # fmt: skip
    return {**_summary(list(apes.values())), "window": window, "per_path": by("path"), "per_primitive": by("primitive")}


def group_of(row: dict) -> tuple:
    """A row's group: (pass, primitive, holders); the pass is the path the sweep ran on (`path` in older files)."""
    return row.get("pass", row.get("path")), row["primitive"], row["holders"]


def group_levels(rows: list[dict]) -> dict[tuple, float]:
    """Each group's level: the median of its rows' measured / predicted totals (rows with both positive)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["measured"]["total_s"] > 0 and r["predicted"]["total_s"] > 0:
            groups.setdefault(group_of(r), []).append(r["measured"]["total_s"] / r["predicted"]["total_s"])
    return {g: median(v) for g, v in groups.items()}


def level_floor(rows: list[dict]) -> dict:
    """The APE left once each group's predictions are scaled by its level (`group_levels`): the best any rescale of a
    primitive as a whole (the machine's speed since calibration, `cost.online`) can do on these runs. What is left is
    each configuration's own error and the noise of its median. Overall and per path."""
    scale = group_levels(rows)
    apes = [(r, abs(scale[group_of(r)] * r["predicted"]["total_s"] - m) / m) for r in rows
            if (m := r["measured"]["total_s"]) > 0 and group_of(r) in scale]  # fmt: skip
    paths = sorted({r.get("path") for r, _ in apes if r.get("path")}, key=str)
    return {**_summary([a for _, a in apes]), "per_path": {v: _summary([a for r, a in apes if r.get("path") == v]) for v in paths}}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"median_ape": None, "p90_ape": None, "n": 0}
    return {"median_ape": float(np.median(values)), "p90_ape": float(np.percentile(values, 90)), "n": len(values)}


def metrics(rows: list[dict], margin: float = 0.10) -> dict:
    """Prediction error overall / per path / per primitive / per phase; the predicate's hit rate and regret."""
    apes = [a for r in rows if (a := _ape(r)) is not None]
    out = {**_summary(apes)}
    for key in ("path", "primitive", "holders", "batch"):  # rows of validations before batches were sweeps of 1
        out[f"per_{key}"] = {v: _summary([a for r in rows if r.get(key, 1) == v and (a := _ape(r)) is not None])
                             for v in sorted({r.get(key, 1) for r in rows if r.get(key, 1)}, key=str)}  # fmt: skip
    out["per_phase"] = {g: _summary([a for r in rows if (a := _ape(r, g)) is not None]) for g in GROUPS[:-1]}
    out["signed"] = signed_errors(rows)
    out["drift"] = drift(rows)
    cis = [r["median_ci"] for r in rows if math.isfinite(r.get("median_ci", math.inf))]  # 3 runs or more
    out["measurement"] = {"runs_median": float(np.median([len(r["measured_runs"]) for r in rows])) if rows else None,
                          "median_ci_median": float(np.median(cis)) if cis else None,
                          "median_ci_p90": float(np.percentile(cis, 90)) if cis else None}  # fmt: skip
    out["online"] = online(rows)
    out["level_floor"] = level_floor(rows)
    corrected = [a for r in rows if (a := _corrected_ape(r)) is not None]
    out["drift_corrected"] = {**_summary(corrected), "per_path": {
        v: _summary([a for r in rows if r["path"] == v and (a := _corrected_ape(r)) is not None])
        for v in sorted({r["path"] for r in rows if r["path"]}, key=str)}}  # fmt: skip
    out.update(decisions(rows, margin))
    return out


COMPARED = ("median_ape", "p90_ape", "n", "per_path", "per_primitive", "per_holders", "per_batch", "signed", "hit_rate",
            "decisive_configs", "regret")  # fmt: skip


def compared_metrics(rows: list[dict], label: str, margin: float = 0.10) -> dict:
    """`metrics`' error, hit rate and regret of compared profile `label` (`validate --compare`): each row's measured
    runs beside that profile's prediction of the same runs (`row["compared"][label]`)."""
    m = metrics([{**r, "predicted": r["compared"][label]} for r in rows], margin)
    return {k: m[k] for k in COMPARED}


def signed_errors(rows: list[dict]) -> dict:
    """Per primitive and holder count, per phase and in total: the median over configurations of (predicted -
    measured) / measured (+: priced slow). Drift since calibration moves every primitive alike; a term the model
    lacks shows as one primitive's or one phase's bias against the others of the same run."""
    out: dict = {}
    for prim in sorted({r["primitive"] for r in rows}):
        for h in sorted({r["holders"] for r in rows if r["primitive"] == prim}):
            mine = [r for r in rows if r["primitive"] == prim and r["holders"] == h]
            errors = {g: [(r["predicted"][g] - r["measured"][g]) / r["measured"][g] for r in mine if r["measured"][g] > 0]
                      for g in GROUPS}  # fmt: skip
            out.setdefault(prim, {})[str(h)] = {g: float(np.median(e)) if e else None for g, e in errors.items()}
    return out


def decisions(rows: list[dict], margin: float = 0.10) -> dict:
    """Per configuration: the predicted-cheapest and the measured-fastest primitive."""
    configs: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["holders"], r.get("pass"), r["rows"], r["chunk_tokens"], r["steps"], r.get("batch", 1))
        configs.setdefault(key, {})[r["primitive"]] = r
    hits = decisive = 0
    chosen = best = 0.0
    table = []
    for key, by_prim in configs.items():
        measured = {p: r["measured"]["total_s"] for p, r in by_prim.items()}
        predicted = {p: r["predicted"]["total_s"] for p, r in by_prim.items()}
        fastest, pick = min(measured, key=measured.get), min(predicted, key=predicted.get)
        ranked = sorted(measured.values())
        is_decisive = len(ranked) > 1 and ranked[1] > (1 + margin) * ranked[0]
        decisive += is_decisive
        hits += is_decisive and pick == fastest
        chosen += measured[pick]
        best += measured[fastest]
        table.append({"holders": key[0], "path": key[1], "rows": key[2], "chunk_tokens": key[3], "steps": key[4], "batch": key[5],
                      "predicted": pick, "measured_fastest": fastest, "decisive": bool(is_decisive)})  # fmt: skip
    return {"hit_rate": hits / decisive if decisive else None, "decisive_configs": decisive, "configs": len(configs),
            "regret": chosen / best - 1 if best else None, "decisions": table}  # fmt: skip
