"""Rich tables for `qroute models`, `qroute plan` and `qroute explain` (formatting only)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from qroute.cost.model import PHASES


def fmt_s(seconds: float | None) -> str:
    """Seconds in the unit a person reads fastest."""
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s >= 1:
        return f"{seconds:.3g} s"
    if s >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.3g} {unit}"
    return f"{n:.0f} B"


def models_table(rows: list[dict]) -> Table:
    t = Table(title="Presets: routed payload per row, move-the-cache bytes per token (all layers)")
    for col in ("model", "kind", "L", "H", "row out", "row back", "KV bf16", "KV fp8", "indexer"):
        t.add_column(col, no_wrap=col == "model", justify="left" if col in ("model", "kind", "indexer") else "right")
    for r in rows:
        t.add_row(
            r["name"], r["kind"], str(r["layers"]), str(r["heads"]),
            f"{r['q_row_bytes']} B", f"{r['o_row_bytes']} B",
            fmt_bytes(r["kv_token_bytes"]["bf16"]), fmt_bytes(r["kv_token_bytes"]["fp8"]),
            r["indexer"] or "-",
        )  # fmt: skip
    return t


def plan_table(result: dict) -> Table:
    req = result["request"]
    title = (
        f"{result['model']} on {result['profile']} ({result['provenance']}): {req['rows']} rows x {req['layers']} layers, "
        f"{req['holders']} holder(s) x {req['chunk_tokens']} tokens, "
        f"{'sparse' if req['sparse'] else 'contiguous'}, offset {req['offset']}, reuse {req['reuse_steps']} step(s)"
    )
    t = Table(title=title)
    t.add_column("primitive")
    t.add_column("path")
    for phase in PHASES:
        t.add_column(phase, justify="right")
    t.add_column("total", justify="right")
    t.add_column("vs best", justify="right")
    best = result["primitives"][result["choice"]]["total_s"]
    for name, p in result["primitives"].items():
        mark = " *" if name == result["choice"] else ""
        cells = [fmt_s(p["phases"][ph]) for ph in PHASES]
        t.add_row(name + mark, p["path"] or "-", *cells, fmt_s(p["total_s"]), f"{p['total_s'] / best:.2f}x")
    return t


def explain_table(result: dict) -> Table:
    t = Table(title=f"Break-even quantities ({result['model']}, {result['profile']})")
    for col in ("path", "quantity", "break-even", "now", "below", "above", "now wins"):
        t.add_column(col, justify="right" if col in ("break-even", "now") else "left")
    for b in result["breakevens"]:
        value, now = b["value"], b["current"]
        if b["unit"] == "s":
            value_s, now_s = fmt_s(value), fmt_s(now)
        else:
            value_s = "never" if value is None else f"{value:,.1f}"
            now_s = f"{now:,.0f}"
        t.add_row(b["path"], b["quantity"], value_s, now_s, b["cheaper_below"], b["cheaper_above"], b["winner_now"])
    return t


def crossover_table(crossovers: list[dict]) -> Table:
    t = Table(title="Path choice by message size (alpha + bytes / beta, per regime)")
    for col in ("path a", "path b", "cheaper path by message size"):
        t.add_column(col)
    for c in crossovers:
        edges = ["0", *(fmt_bytes(x) for x in c["flips"])]
        spans = [f"{w} from {e}" for w, e in zip(c["winners"], edges)]
        t.add_row(c["a"], c["b"], "; ".join(spans))
    return t


def print_tables(*tables: Table) -> None:
    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze tables into 80 columns
        console = Console(width=120)
    for t in tables:
        console.print(t)
