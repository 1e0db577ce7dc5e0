"""PNG figures from result files (they read results, never run anything)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"predicate": "tab:purple", "route": "tab:blue", "fetch": "tab:orange", "local": "tab:green"}
GROUPS = ("network_s", "compute_s", "merge_s")


def predicted_vs_measured(results: dict, path: Path) -> Path:
    """Scatter of predicted against measured time per batch, one colour per mode, with y = x."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = float("inf"), 0.0
    for mode, color in COLORS.items():
        runs = [r for r in results["runs"] if r["mode"] == mode and r["measured"]["total_s"] > 0]
        if not runs:
            continue
        x = [r["measured"]["total_s"] * 1e3 for r in runs]
        y = [r["predicted"]["total_s"] * 1e3 for r in runs]
        ax.scatter(x, y, label=mode, color=color, alpha=0.8)
        lo, hi = min(lo, *x, *y), max(hi, *x, *y)
    if hi > 0:
        ax.plot([lo * 0.8, hi * 1.2], [lo * 0.8, hi * 1.2], color="gray", linestyle="--", linewidth=1, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("measured per batch (ms)")
    ax.set_ylabel("predicted per batch (ms)")
    ax.set_title("Cost model vs the live cluster")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def phase_bars(results: dict, path: Path) -> Path:
    """Measured (solid) and predicted (hatched) time per mode, split into network / compute / merge."""
    modes = [m for m in COLORS if m in results["summary"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.38
    for i, mode in enumerate(modes):
        runs = [r for r in results["runs"] if r["mode"] == mode]
        for j, (kind, hatch) in enumerate((("measured", None), ("predicted", "//"))):
            bottom = 0.0
            for g, shade in zip(GROUPS, (1.0, 0.65, 0.35)):
                value = sum(r[kind][g] for r in runs) * 1e3
                ax.bar(i + (j - 0.5) * width, value, width, bottom=bottom, color=COLORS[mode], alpha=shade,
                       hatch=hatch, edgecolor="black", linewidth=0.5)  # fmt: skip
                bottom += value
    ax.set_xticks(range(len(modes)), [f"{m}\n(measured | predicted)" for m in modes], fontsize=8)
    ax.set_ylabel("time over all batches (ms)")
    ax.set_yscale("log")
    ax.set_title("Remote attention time by mode: network, compute, merge (dark to light)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
