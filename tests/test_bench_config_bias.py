"""benchmarks.config_bias: a configuration's own bias, apart from its group's level and from noise."""

import json
import math

import numpy as np
import pytest


def _validation(seed: int, level: float, biased: float = 0.2, n: int = 12) -> list[dict]:
    """One validation's rows: every route configuration measured at `level` x its price with 3% noise on the network,
    but the first, whose network takes `biased` x the total more (priced low); a fetch group at its own level."""
    rng = np.random.default_rng(seed)
    rows = []
    for primitive, lvl in (("route", level), ("fetch", 0.8 * level)):
        for i in range(n):
            extra = biased if (primitive == "route" and i == 0) else 0.0
            m = 0.010 * lvl * (1 + extra) * math.exp(0.03 * rng.standard_normal())
            rows.append({"pass": "gloo", "path": "gloo", "primitive": primitive, "holders": 1, "step_tokens": i,
                         "chunk_tokens": 64, "steps": 1, "batch": 1,
                         "measured": {"total_s": m, "network_s": m - 0.005 * lvl, "compute_s": 0.005 * lvl},
                         "predicted": {"total_s": 0.010, "network_s": 0.005, "compute_s": 0.005}})  # fmt: skip
    return rows


def test_a_configurations_own_bias_stands_out_from_the_levels_and_the_noise():
    from benchmarks.config_bias import biases, summarize

    # the machine ran at a different speed in each validation: the levels move 0.8-1.3x, the bias stays
    got = biases([_validation(s, level) for s, level in enumerate((0.8, 1.0, 1.3, 0.9, 1.1))])
    top = summarize(got, top=3)["top"]
    assert (top[0]["primitive"], top[0]["step_tokens"]) == ("route", 0)
    assert top[0]["bias"] == pytest.approx(math.log(1.2), abs=0.04) and top[0]["n"] == 5
    assert abs(top[0]["t"]) > 3 and top[0]["phases"]["network_s"] < -0.1 and abs(top[0]["phases"]["compute_s"]) < 1e-9
    others = [b for k, b in got.items() if not (k[1] == "route" and k[3] == 0)]
    assert max(abs(b["bias"]) for b in others) < 0.06  # the levels are taken out per group, fetch's included


def test_main_writes_the_result_and_refuses_what_it_cannot_compare(tmp_path):
    from benchmarks.config_bias import main

    paths = []
    for s in range(3):
        paths.append(tmp_path / f"validation-{s}.json")
        paths[-1].write_text(json.dumps({"rows": _validation(s, 1.0), "metrics": {}}))
    result = main([*map(str, paths), "--out", str(tmp_path), "--top", "2"])
    written = json.loads(next(tmp_path.glob("config-bias-*.json")).read_text())
    assert written == json.loads(json.dumps(result)) and len(written["top"]) == 2 and written["configs"] == 24
    with pytest.raises(SystemExit, match="1 validation given; expected 2 or more"):
        main([str(paths[0])])
    with pytest.raises(SystemExit, match="config_bias: validation file .* does not exist"):
        main([str(paths[0]), str(tmp_path / "missing.json")])
    other = tmp_path / "validation-other.json"
    other.write_text(json.dumps({"rows": [{**r, "chunk_tokens": 999} for r in _validation(9, 1.0)], "metrics": {}}))
    with pytest.raises(SystemExit, match="no configuration appears in 2 or more"):
        main([str(paths[0]), str(other)])
