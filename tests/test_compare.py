"""`qroute compare`: repeated calibrations side by side, with the spread of each constant and exchange time."""

import dataclasses
import json

import pytest

from qroute.calibration.fit import rel_spread
from qroute.cli import main
from qroute.cost import load_profile
from qroute.queries import compare_profiles
from qroute.report.calibration import short_labels


def _with(profile, path: str, probe: float | None = None, **changes):
    spec = dataclasses.replace(profile.path(path), **changes)
    fits = {"speed_probe": {path: {"route": probe, "fetch": probe, "local": probe}}} if probe else {}
    return dataclasses.replace(profile, paths={**profile.paths, path: spec}, fits=fits)


def test_the_spread_is_max_minus_min_over_the_median():
    assert rel_spread([1.0, 1.2]) == pytest.approx(0.2 / 1.1)
    assert rel_spread([3.0, 1.0, 2.0]) == pytest.approx(1.0)
    assert rel_spread([5.0]) is None and rel_spread([0.0, 0.0]) is None


def test_a_slower_alpha_spreads_and_the_probe_takes_the_drift_out():
    base = load_profile("published-h100")
    alpha = base.path("ibgda").alpha_s
    a = _with(base, "ibgda", probe=1e-3)
    b = _with(base, "ibgda", probe=1.2e-3, alpha_s=1.2 * alpha)  # the machine ran 20% slower, alpha with it
    out = compare_profiles([a, b], ["a", "b"], sizes=(1024, 1 << 30), tolerance=0.10)
    r = out["paths"]["ibgda"]
    assert r["constants"]["alpha_s"]["values"] == [alpha, 1.2 * alpha]
    assert r["constants"]["alpha_s"]["rel_spread"] == pytest.approx(0.2 / 1.1)
    assert r["constants"]["beta_Bps"]["rel_spread"] == 0.0
    small, large = r["exchange_s"]["1024"]["rel_spread"], r["exchange_s"][str(1 << 30)]["rel_spread"]
    assert 0.1 < small <= 0.2 / 1.1 and large < 0.01  # alpha dominates small exchanges only
    assert r["route_probe_s"]["rel_spread"] == pytest.approx(0.2 / 1.1)
    assert r["alpha_per_probe"]["rel_spread"] == pytest.approx(0.0, abs=1e-12)
    assert r["agree"] is False
    assert compare_profiles([a, b], ["a", "b"], tolerance=0.2)["paths"]["ibgda"]["agree"] is True
    assert out["paths"]["nvlink4"]["agree"] is True and out["paths"]["nvlink4"]["alpha_per_probe"] is None


def test_paths_not_in_every_profile_are_named_not_compared():
    base = load_profile("published-h100")
    fewer = dataclasses.replace(base, paths={"ibgda": base.path("ibgda")}, default_paths=("ibgda",))
    out = compare_profiles([base, fewer], ["all", "fewer"])
    assert list(out["paths"]) == ["ibgda"] and set(out["not_in_all"]) == set(base.paths) - {"ibgda"}


def test_the_cli_prints_json_and_a_table(tmp_path, capsys):
    base = load_profile("published-h100")
    files = []
    for i, scale in enumerate((1.0, 1.5)):
        f = tmp_path / f"profile-vm-repeat{i + 1}-2026-11-26.json"
        f.write_text(json.dumps(_with(base, "ibgda", alpha_s=scale * base.path("ibgda").alpha_s).to_dict()))
        files.append(str(f))
    assert main(["compare", *files, "--json", "--sizes", "1024,65536"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profiles"] == files and out["sizes"] == [1024, 65536] and out["tolerance"] == 0.10
    assert set(out["paths"]["ibgda"]) == {"constants", "exchange_s", "route_probe_s", "alpha_per_probe", "agree"}
    assert out["paths"]["ibgda"]["agree"] is False
    assert main(["compare", *files]) == 0
    table = capsys.readouterr().out
    assert "repeat1" in table and "repeat2" in table and "ibgda: agree within 10%" in table and "40.0%" in table


def test_labels_drop_what_every_name_shares():
    assert short_labels(["r/profile-vm-repeat1-2026-11-26.json", "profile-vm-repeat2-2026-11-26.json"]) == ["repeat1", "repeat2"]
    assert short_labels(["r/profile-vm-repeat1-2026-11-26.json.gz", "profile-vm-repeat2-2026-11-26.json"]) == ["repeat1", "repeat2"]
    assert short_labels(["published-h100", "h100-kernels"]) == ["published-h100", "h100-kernels"]
    assert short_labels(["a.json", "a.json"]) == ["a", "a"]


def test_profiles_without_a_common_path_are_an_error(tmp_path, capsys):
    base = load_profile("published-h100")
    files = []
    for name in ("ibgda", "nvlink4"):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(dataclasses.replace(base, paths={name: base.path(name)}, default_paths=(name,)).to_dict()))
        files.append(str(f))
    assert main(["compare", *files]) == 2
    err = capsys.readouterr().err.strip()
    assert "have no path in common" in err and len(err.splitlines()) == 1
