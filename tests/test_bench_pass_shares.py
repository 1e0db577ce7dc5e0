"""benchmarks.pass_shares: the two rules for validation's further passes, replayed on synthetic rows."""

import gzip
import json
from statistics import median

import numpy as np
import pytest


def _rows(n: int = 20, runs: int = 16) -> list[dict]:
    """Half the configurations cheap and noisy (5 ms a run, runs spread 30%), half costly and quieter (100 ms, 5%: still
    above the 2% target after their first runs, so both kinds compete for the budget)."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        noisy = i % 2 == 0
        x = [float(v) for v in 1.0 + (0.3 if noisy else 0.05) * rng.standard_normal(runs)]
        rows.append({"holders": 1, "pass": "gloo", "primitive": "route", "rows": i, "chunk_tokens": 64, "steps": 1,
                     "batch": 1, "measured": {"total_s": median(x)}, "predicted": {"total_s": 1.0},
                     "measured_runs": x, "wall_runs": [0.005 if noisy else 0.1] * runs})  # fmt: skip
    return rows


def test_shares_spend_the_same_budget_where_the_medians_are_least_known():
    from benchmarks.pass_shares import compare, costs_of

    rows = _rows()
    got = compare(rows, costs_of(rows), seeds=5)
    every, shares = got["every pass"], got["shares"]
    assert every["budget_s"] == shares["budget_s"] == pytest.approx(10 * 11 * (0.005 + 0.1))  # 11 runs beyond the 5 each
    assert every["spent_s"] >= every["budget_s"] and shares["spent_s"] >= shares["budget_s"]  # the budget binds both
    assert shares["ci_p90"] < 0.8 * every["ci_p90"]  # the noisy ones run more often, the quieter ones every 4th pass


def test_main_writes_the_comparison(tmp_path):
    from benchmarks.pass_shares import main

    path = tmp_path / "validation-x.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"rows": _rows(), "metrics": {}}, f)
    result = main([str(path), "--seeds", "2", "--out", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("pass-shares-*.json")).read_text())
    assert set(written["files"][0]) == {"file", "static", "level_floor", "every pass", "shares"}
    assert written["files"][0]["file"] == "validation-x.json.gz" and written["summary"]["static"]["files"] == 1
    assert written == json.loads(json.dumps(result))
    with pytest.raises(SystemExit, match="pass_shares: validation file .* does not exist"):
        main([str(tmp_path / "missing.json")])


def test_the_level_floor_takes_out_one_factor_per_group():
    from benchmarks.pass_shares import level_floor

    def row(primitive, measured, predicted):
        return {"pass": "gloo", "primitive": primitive, "holders": 1, "measured": {"total_s": measured},
                "predicted": {"total_s": predicted}}

    rows = [row("route", 1.2, 1.0), row("route", 2.4, 2.0), row("route", 3.6, 3.0), row("fetch", 1.0, 1.0)]
    got = level_floor(rows)
    assert got["level_floor"]["p90_ape"] < 1e-12  # route priced 1/1.2 of what it took at every shape: one factor
    assert got["static"]["median_ape"] > 0.1
    shaped = level_floor([row("route", 1.0, 1.0), row("route", 2.0, 1.0), row("route", 3.0, 1.0)])
    assert shaped["level_floor"]["median_ape"] == pytest.approx(1 / 3)  # scaled by 2: 100%, 0% and 33% off: shape error stays
