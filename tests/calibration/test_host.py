"""`qroute calibrate --host-tier` / `qroute validate --host-tier` end to end on the CPU (memory copies as the path)."""

import json
import subprocess
import sys

import pytest

from qroute.calibration.calibrate import CalibrationConfig, run_calibration
from qroute.calibration.host import copy_bandwidth_sweep, copy_latency_sweep
from qroute.calibration.validate import ValidationConfig, run_validation
from qroute.calibration.validation_metrics import median_ci
from qroute.cost import profile as prof
from qroute.runtime.world import WorldSpec
from qroute.workload.corpus import CorpusSpec

pytestmark = pytest.mark.timeout(300)
SMALL = WorldSpec(layers=1, hidden=64, heads=4, corpus=CorpusSpec(max_tokens=4096, block_size=8, chunk_blocks=32))


def test_copy_sweeps_fill_their_rows_as_they_go():
    import torch

    rows, seen = [], []
    out = copy_latency_sweep(torch.device("cpu"), (8, 4096), reps=5, on_size=seen.append, rows=rows)
    assert out is rows and [r.size for r in rows] == [8, 4096] and seen == [8, 4096]
    assert all(0 < r.p10_s <= r.median_s <= r.p90_s for r in rows)
    bw = copy_bandwidth_sweep(torch.device("cpu"), (1024, 1 << 20), window=4, reps=3)
    assert [r["size"] for r in bw] == [1024, 1 << 20] and all(r["MBps"] > 0 for r in bw)


def test_host_tier_calibration_then_validation(tmp_path):
    results = run_calibration(CalibrationConfig(world=SMALL, quick=True, progress=False, device="cpu", keep_trace=True))
    records = [r for runs in results["trace"].values() for run in runs for r in run]
    assert records and not any(r.get("ladder") for r in records)  # no idle ladder in the host tier's training
    p = prof.from_dict(results["profile"], "calibration")
    assert list(p.paths) == ["host-memcpy"] and p.default_paths == ("host-memcpy",)
    assert p.machine["backend"] == "in-process (host tier)" and "host tier" in p.machine["fabric"]
    path = p.path("host-memcpy")
    assert 0 < path.alpha_s < 0.1 and path.beta_Bps > 1e6
    for name in ("attention", "local_attention", "merge", "splice", "gather", "reprefill"):
        assert results["profile"]["fits"][name]["median_ape"] < 0.5
    file = tmp_path / "profile.json"
    p.save(file)
    config = ValidationConfig(str(file), world=SMALL, step_tokens=(1, 4), chunk_blocks=(4,), steps=(2,), reps=2, max_reps=2,
                              progress=False, device="cpu")  # fmt: skip
    out = run_validation(config)
    rows = out["rows"]
    assert len(rows) == 2 * 3 and {r["primitive"] for r in rows} == {"route", "fetch", "local"}
    assert all(r["max_rel_err"] <= 1e-4 and r["holders"] == 1 for r in rows)
    assert {r["path"] for r in rows if r["primitive"] != "local"} == {"host-memcpy"}
    assert all(len(r["measured_runs"]) == 2 and r["measured"]["total_s"] > 0 for r in rows)
    m = out["metrics"]
    assert m["n"] == 6 and m["median_ape"] is not None and m["configs"] == 2 and 0 <= m["regret"]


def test_host_tier_with_a_fabric_is_one_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qroute", "validate", "--host-tier", "--fabric", "veth", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "--host-tier with --fabric" in r.stderr and "Traceback" not in r.stderr


def test_host_tier_auto_profile_is_written(tmp_path):
    target = tmp_path / "auto.json"
    config = ValidationConfig("auto", world=SMALL, step_tokens=(1,), chunk_blocks=(4,), steps=(1,), reps=1, max_reps=1,
                              progress=False, device="cpu")  # fmt: skip
    out = run_validation(config, str(target))
    assert out["profile_file"] == str(target) and json.loads(target.read_text())["paths"].keys() == {"host-memcpy"}
    assert "calibration" in out and len(out["rows"]) == 3


def test_further_passes_rerun_only_the_uncertain_configurations(tmp_path):
    file = tmp_path / "profile.json"
    prof.from_dict(run_calibration(CalibrationConfig(world=SMALL, quick=True, progress=False, device="cpu"))["profile"],
                   "calibration").save(file)  # fmt: skip
    base = dict(world=SMALL, step_tokens=(1,), chunk_blocks=(4,), steps=(1,), reps=3, max_reps=6, progress=False, device="cpu")
    loose = run_validation(ValidationConfig(str(file), ci=0.5, **base))["rows"]
    for r in loose:  # rerun only where the first passes left the median uncertain (a stall can, on a busy machine)
        known = median_ci(r["measured_runs"][:3]) <= 0.5
        assert len(r["measured_runs"]) == 3 if known else len(r["measured_runs"]) > 3
    tight = run_validation(ValidationConfig(str(file), ci=1e-9, **base))["metrics"]
    assert tight["measurement"]["runs_median"] == 6  # never within 1e-9: every configuration runs max_reps times
    assert tight["measurement"]["median_ci_p90"] > 0
    spent = run_validation(ValidationConfig(str(file), ci=1e-9, budget_s=1e-3, **base))  # spent before the sweep
    assert spent["metrics"]["measurement"]["runs_median"] == 3 and spent["budget_s"] == 1e-3  # the first passes run
