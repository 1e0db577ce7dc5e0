"""`reprice`: a validation's runs, kept as plans, priced again by any profile exactly as the live run priced them."""

import dataclasses
import gzip
import json
from types import SimpleNamespace

import pytest

from qroute import geometry as geo
from qroute.calibration.reprice import plan_record, predict, price_rows, pricing_record, read_validation, reprice, sessions_of
from qroute.cost import CostModel, load_profile
from qroute.cost.model import predicted_groups
from qroute.errors import QrouteError
from qroute.planner import HolderDemand, Request, combine_batch, forced_plan

GEOMETRY = geo.resolve("deepseek-v2-lite")


def _runs(model, seed: int = 0):
    """Three runs of a batch of two requests over two holders each, with idle times like the executor's."""
    runs = []
    for j in range(3):
        batch = []
        for k, primitive in enumerate(("route", "fetch")):
            idle = (None, 0.002 * (j + 1) + 0.0001 * seed)
            demands = tuple(HolderDemand(h, 256 + 64 * h, ("p",) if k else (), 400 + h, idle[h]) for h in (0, 1))
            request = Request(16 * (k + 1), 2, demands, steps=1 + j, sparse=bool(k), offset=64 * j)
            batch.append(SimpleNamespace(plan=forced_plan(model, request, primitive)))
        runs.append(batch)
    return runs


def _profile():
    p = load_profile("published-h100")
    spec = p.paths[p.default_paths[0]]
    return dataclasses.replace(p, paths={**p.paths, "p": spec}, default_paths=(p.default_paths[0], "p"))


def test_a_plan_record_round_trips_through_json_to_the_same_prediction():
    profile = _profile()
    model = CostModel(GEOMETRY, profile, "fp32", "fp32")
    for run in _runs(model):
        record = json.loads(json.dumps(plan_record(run)))
        again = sessions_of(record)
        assert [r for r, _ in again] == [s.plan.request for s in run]  # shapes, demands and idle times, exactly
        direct = combine_batch(model, [(s.plan.request, s.plan.holders) for s in run])
        assert predicted_groups(combine_batch(model, again)) == predicted_groups(direct)


def test_price_rows_gives_each_profile_the_median_of_its_runs_and_reprice_scores_them():
    profile = _profile()
    model = CostModel(GEOMETRY, profile, "fp32", "fp32")
    plans = [plan_record(run) for run in _runs(model)]
    pricing = json.loads(json.dumps(pricing_record(GEOMETRY, "fp32")))
    slow = dataclasses.replace(profile, paths={n: dataclasses.replace(s, alpha_s=3 * s.alpha_s, knots=()) for n, s in profile.paths.items()})
    own = [predicted_groups(combine_batch(dataclasses.replace(model, profile=dataclasses.replace(profile, default_paths=("p",))),
                                          sessions_of(r))) for r in plans]  # fmt: skip
    measured = {g: sorted(p[g] for p in own)[1] for g in own[0]}
    rows = [{"pass": "p", "plans": plans, "measured": measured, "predicted": measured, "primitive": "route", "holders": 2,
             "rows": 16, "chunk_tokens": 256, "steps": 1, "path": "p", "measured_runs": [1.0], "median_ci": 0.0}]  # fmt: skip
    price_rows(rows, pricing, {"same": profile, "slow": slow})
    assert rows[0]["compared"]["same"] == measured  # the median over the runs, as `validate` takes it
    assert rows[0]["compared"]["slow"]["network_s"] > measured["network_s"]
    assert rows[0]["compared"]["slow"]["compute_s"] == measured["compute_s"]  # alpha moves only the network
    scored = reprice({"rows": rows, "pricing": pricing}, {"same": profile}, {"same": "published-h100"})
    assert scored["same"]["median_ape"] == 0.0 and scored["same"]["profile"] == "published-h100"
    assert predict(rows[0], CostModel(GEOMETRY, dataclasses.replace(profile, default_paths=("p",)), "fp32", "fp32")) == measured


def test_old_results_and_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(QrouteError, match="without 'plans'"):
        price_rows([{"pass": "p"}], {}, {})
    with pytest.raises(QrouteError, match="without 'pricing'"):
        reprice({"rows": []}, {}, {})
    with pytest.raises(QrouteError, match="does not exist"):
        read_validation(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(b'{"rows": ['))
    with pytest.raises(QrouteError, match="not valid JSON"):
        read_validation(str(bad))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"paths": {}}))
    with pytest.raises(QrouteError, match="has no 'rows' and 'metrics'"):
        read_validation(str(other))
    good = tmp_path / "v.json.gz"
    good.write_bytes(gzip.compress(json.dumps({"rows": [], "metrics": {}}).encode()))
    assert read_validation(str(good)) == {"rows": [], "metrics": {}}


def test_compare_labels_are_file_stems_numbered_where_they_collide():
    from qroute.calibration.reprice import compare_labels

    names = ("a/profile-x-2026-11-27.json.gz", "b/profile-x-2026-11-27.json", "published-h100")
    assert list(compare_labels(names)) == ["profile-x-2026-11-27", "profile-x-2026-11-27-2", "published-h100"]
