"""Price a validation's measured runs with other profiles.

Each validation row keeps, per run, what the planner knew when it planned that run (`plans`:
each request's shape and holders' demands, with how long each holder had sat idle, and the
primitive and path each holder ran), and the results keep the model's geometry and dtype
(`pricing`). Any profile can then be scored on measurements already taken, the measurement
noise held fixed: `qroute validate --compare` (at the end of a live run) and `qroute reprice`
(on a validation file). No clocks, no cluster: profiles and result files in, metrics out.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, replace
from pathlib import Path
from statistics import median

from qroute.calibration.validation_metrics import GROUPS, compared_metrics
from qroute.cost import CostModel, load_profile
from qroute.cost.model import Phases, predicted_groups
from qroute.cost.profile import stem as profile_stem
from qroute.errors import QrouteError
from qroute.geometry import Geometry, IndexerSpec
from qroute.planner import HolderDemand, HolderPlan, Request, Session, combine_batch


def plan_record(sessions) -> list:
    """One run's plans, as JSON lists: per request `[[rows, layers, steps, sparse, offset, [[holder, tokens, paths,
    prefill_tokens, idle_s], ...]], [[holder, tokens, primitive, path], ...]]` (`sessions`: the executor's, each with
    its `plan`)."""
    return [[_request(s.plan.request), [[h.holder, h.tokens, h.primitive, h.path] for h in s.plan.holders]] for s in sessions]


def _request(r: Request) -> list:
    demands = [[d.holder, d.tokens, list(d.paths), d.prefill_tokens, d.idle_s] for d in r.demands]
    return [r.rows, r.layers, r.steps, r.sparse, r.offset, demands]


def sessions_of(record: list) -> list[Session]:
    """The planner's sessions of one run's `plan_record` (each holder's primitive and path; its phases unpriced)."""
    out = []
    for (rows, layers, steps, sparse, offset, demands), holders in record:
        request = Request(rows, layers, tuple(HolderDemand(h, t, tuple(p), pf, idle) for h, t, p, pf, idle in demands),
                          steps, sparse, offset)  # fmt: skip
        out.append((request, tuple(HolderPlan(h, t, prim, path, Phases(), {}) for h, t, prim, path in holders)))
    return out


def pricing_record(geometry: Geometry, dtype: str) -> dict:
    """What pricing a run needs beside its plans and a profile: the model's geometry and its dtype."""
    return {"geometry": asdict(geometry), "dtype": dtype}


def _geometry(record: dict) -> Geometry:
    indexer = record.get("indexer")
    return Geometry(**{**record, "indexer": IndexerSpec(**indexer) if indexer else None})


def predict(row: dict, model: CostModel) -> dict[str, float]:
    """A row's prediction by `model`: per phase group, the median over its runs of `combine_batch` of each run's plans."""
    runs = [predicted_groups(combine_batch(model, sessions_of(record))) for record in row["plans"]]
    return {g: median(p[g] for p in runs) for g in GROUPS}


def price_rows(rows: list[dict], pricing: dict, profiles: dict) -> None:
    """In place: each row's `compared[label]`, the prediction of each profile (`profiles`: label -> Profile) on the
    path the row ran (`pass`). A row without `plans` (a validation before 2026-11-27) is a one-line error."""
    if any("plans" not in r for r in rows):
        raise QrouteError("validation rows without 'plans': expected a validation written on 2026-11-27 or later")
    geometry, dtype = _geometry(pricing["geometry"]), pricing["dtype"]
    for label, profile in profiles.items():
        models: dict[str, CostModel] = {}
        for row in rows:
            name = row["pass"]
            if name not in models:
                models[name] = CostModel(geometry, replace(profile, default_paths=(name,)), dtype, dtype)
            row.setdefault("compared", {})[label] = predict(row, models[name])


def reprice(results: dict, profiles: dict, names: dict[str, str], margin: float = 0.10) -> dict:
    """label -> `compared_metrics` of each profile on `results`' rows (priced in place, `price_rows`), with the
    profile's name (`names`: label -> the file or built-in name asked for)."""
    if "pricing" not in results:
        raise QrouteError("validation results without 'pricing': expected a validation written on 2026-11-27 or later")
    price_rows(results["rows"], results["pricing"], profiles)
    return {label: {"profile": names[label], **compared_metrics(results["rows"], label, margin)} for label in profiles}


def read_validation(path: str) -> dict:
    """A validation's results file (`validation-*.json`, or gzipped `.json.gz`); a one-line error if it is missing,
    not JSON, or not a validation."""
    file = Path(path)
    if not file.is_file():
        raise QrouteError(f"validation file {path!r} does not exist: expected a validation-*.json[.gz] file")
    try:
        with (gzip.open if file.suffix == ".gz" else open)(file, "rt") as f:
            results = json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QrouteError(f"validation file {path!r} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list) or "metrics" not in results:
        raise QrouteError(f"validation file {path!r} has no 'rows' and 'metrics': expected `qroute validate`'s results")
    return results


def with_compared(results: dict, compare: tuple[str, ...], margin: float = 0.10) -> dict:
    """`results` with `compared` (the `compare` profiles priced on the same runs, `reprice`), if any. A profile that
    cannot price them (a path the runs took that it lacks) gets `error` instead: the runs are kept."""
    if compare:
        needed = tuple(sorted({r["pass"] for r in results["rows"]}))
        results["compared"] = {}
        for label, name in compare_labels(compare).items():
            try:
                scored = reprice(results, {label: compared_profile(name, needed)}, {label: name}, margin)
            except QrouteError as exc:
                scored = {label: {"profile": name, "error": str(exc)}}
            results["compared"].update(scored)
    return results


def compare_labels(names: tuple[str, ...]) -> dict[str, str]:
    """A label per compared profile (its file's name less `.json` or `.json.gz`, or the built-in name; numbered where two collide) -> the name."""
    labels: dict[str, str] = {}
    for name in names:
        stem = profile_stem(name)
        label, k = stem, 2
        while label in labels:
            label, k = f"{stem}-{k}", k + 1
        labels[label] = name
    return labels


def compared_profile(name: str, needed: tuple[str, ...] = ()):
    """The profile `name` (a file or built-in name), which must price every path in `needed` (else a one-line error)."""
    profile = load_profile(name)
    missing = [p for p in needed if p not in profile.paths]
    if missing:
        raise QrouteError(f"compare profile {name!r} has no path {missing[0]!r}: expected a profile pricing every path "
                          f"the runs take ({', '.join(needed)}); it has {', '.join(sorted(profile.paths))}")  # fmt: skip
    return profile
