"""JSON-ready answers to the CLI's questions: one library call per subcommand.

The dicts returned here are the stable `--json` output of `qroute models`, `qroute plan`
and `qroute explain` (documented in docs/cli.md).
"""

from __future__ import annotations

from qroute import geometry as geo
from qroute.calibration.fit import rel_spread
from qroute.cost.model import PRIMITIVES, CostModel
from qroute.cost.predicate import breakevens, path_crossovers
from qroute.planner import Request, holder_options, plan, uniform_phases, uniform_request


def models() -> list[dict]:
    """Every preset with its geometry and the two coefficients."""
    return [model_summary(geo.preset(name)) for name in geo.preset_names()]


def model_summary(g: geo.Geometry) -> dict:
    bf16, fp8 = g.coefficients("bf16"), g.coefficients("fp8")
    return {
        "name": g.name, "kind": g.kind, "layers": g.layers, "heads": g.heads, "kv_heads": g.kv_heads,
        "qk_dim": g.qk_dim, "v_dim": g.v_dim,
        "q_row_bytes": bf16.q_row_bytes, "o_row_bytes": bf16.o_row_bytes,
        "kv_token_layer_bytes": {"bf16": bf16.kv_token_layer_bytes, "fp8": fp8.kv_token_layer_bytes},
        "kv_token_bytes": {"bf16": bf16.kv_token_bytes, "fp8": fp8.kv_token_bytes},
        "indexer": f"{g.indexer.heads}x{g.indexer.head_dim}, top-{g.indexer.topk}" if g.indexer else None,
        "source": g.source,
    }  # fmt: skip


def build_request(
    model: CostModel, rows: int, chunk_tokens: int, holders: int, layers: int | None = None,
    sparse: bool = False, offset: int = 0, reuse_steps: int = 1, paths: tuple[str, ...] = (), idle_s: float | None = None,
) -> Request:  # fmt: skip
    """The uniform request of `qroute plan` (layers default to the model's; the holders idle `idle_s` before it)."""
    for p in paths:
        model.profile.path(p)  # unknown names fail here, with the list of known ones
    return uniform_request(rows, chunk_tokens, holders, layers or model.geometry.layers, reuse_steps, sparse, offset, paths,
                           idle_s)  # fmt: skip


def _request_dict(model: CostModel, r: Request) -> dict:
    return {
        "rows": r.rows, "chunk_tokens": r.demands[0].tokens, "holders": len(r.demands), "layers": r.layers,
        "sparse": r.sparse, "offset": r.offset, "reuse_steps": r.steps, "kv_dtype": model.kv_dtype,
        "paths": list(r.demands[0].paths or model.profile.default_paths),
        "idle_ms": None if r.demands[0].idle_s is None else r.demands[0].idle_s * 1e3,
    }  # fmt: skip


def plan_summary(model: CostModel, request: Request) -> dict:
    """Per primitive: phases (summed over layers and steps), total, path; the choice and margin."""
    options = holder_options(model, request, request.demands[0])
    primitives = {}
    for name in PRIMITIVES:
        phases = uniform_phases(model, request, name)
        primitives[name] = {"total_s": float(phases.total), "phases": phases.as_dict(), "path": options[name][0]}
    ranked = sorted(PRIMITIVES, key=lambda n: primitives[n]["total_s"])
    best, second = primitives[ranked[0]]["total_s"], primitives[ranked[1]]["total_s"]
    p = plan(model, request)
    return {
        "model": model.geometry.name, "profile": model.profile.name, "provenance": model.profile.provenance,
        "request": _request_dict(model, request),
        "choice": ranked[0], "runner_up": ranked[1],
        "margin_s": second - best, "margin_ratio": second / best if best > 0 else None,
        "primitives": primitives,
        "plan": {
            "strategy": p.strategy, "total_s": p.total_s, "phases": p.phases.as_dict(),
            "holders": [{"holder": h.holder, "primitive": h.primitive, "path": h.path, "tokens": h.tokens}
                        for h in p.holders],
        },
    }  # fmt: skip


def explain_summary(model: CostModel, request: Request) -> dict:
    """The break-even table and the path crossovers of a request."""
    table = [b.as_dict() for b in breakevens(model, request)]
    crossovers = path_crossovers(model, request)
    return {
        "model": model.geometry.name, "profile": model.profile.name, "provenance": model.profile.provenance,
        "request": _request_dict(model, request), "breakevens": table, "path_crossovers": crossovers,
    }  # fmt: skip


COMPARE_SIZES = (1024, 64 << 10, 1 << 20, 16 << 20)  # exchange bytes (out + back) at which `compare` prices each path
PATH_CONSTANTS = ("alpha_s", "beta_Bps", "cold_s", "per_holder_s", "holder_serial", "bytes_serial", "fetch_offset_s",
                  "stall_rate_multi", "stall_per_exchange_multi", "stall_s_multi")  # fmt: skip


def compare_profiles(profiles, names, sizes=COMPARE_SIZES, tolerance: float = 0.10) -> dict:
    """How far profiles (repeated calibrations of one machine, or two machines) agree, per path they all have: each
    constant's values and spread, the seconds of one exchange each prices at `sizes` (alpha and beta trade off where
    a calibration's exchanges span few sizes, so these are what to compare), the route speed probe each calibration
    recorded and alpha over it (the machine's drift between calibrations taken out). `agree`: alpha, beta and every
    exchange time within `tolerance`."""
    common = sorted(set.intersection(*(set(p.paths) for p in profiles)))
    paths = {}
    for name in common:
        specs = [p.paths[name] for p in profiles]
        constants = {c: _spread([getattr(s, c) for s in specs]) for c in PATH_CONSTANTS
                     if all(getattr(s, c) is not None for s in specs)}  # a constant every profile has
        exchange = {str(b): _spread([float(s.time(b)) for s in specs]) for b in sizes}
        probes = [p.fits.get("speed_probe", {}).get(name, {}).get("route") for p in profiles]
        probe = _spread(probes) if all(probes) else None
        per_probe = _spread([s.alpha_s / t for s, t in zip(specs, probes)]) if probe else None
        within = [constants["alpha_s"]["rel_spread"], constants["beta_Bps"]["rel_spread"],
                  *(e["rel_spread"] for e in exchange.values())]  # fmt: skip
        paths[name] = {"constants": constants, "exchange_s": exchange, "route_probe_s": probe, "alpha_per_probe": per_probe,
                       "agree": all(x is not None and x <= tolerance for x in within)}  # fmt: skip
    return {"profiles": list(names), "tolerance": tolerance, "sizes": list(sizes), "paths": paths,
            "not_in_all": sorted(set().union(*(set(p.paths) for p in profiles)) - set(common))}  # fmt: skip


def _spread(values) -> dict:
    return {"values": list(values), "rel_spread": rel_spread(values)}
