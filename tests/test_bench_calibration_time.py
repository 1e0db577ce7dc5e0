"""benchmarks.calibration_time: per-mode summaries against the targets, and one-line errors."""

import argparse

import pytest

from benchmarks import calibration_time as ct


def run(mode, command_s, **phases):
    return {"mode": mode, "command_s": command_s, "wall_s": command_s - 3, "phase_s": phases}


def test_summary_counts_the_runs_under_each_modes_target():
    runs = [run("quick", 25.0, launch=2.0, sweeps=1.0), run("full", 119.0, launch=2.5, sweeps=4.0),
            run("quick", 31.0, launch=3.0, sweeps=1.2), run("quick", 29.9, launch=2.2), run("full", 125.0, launch=2.0)]  # fmt: skip
    out = ct.summarize(runs)
    assert (out["quick"]["met"], out["quick"]["runs"], out["full"]["met"], out["full"]["runs"]) == (2, 3, 1, 2)
    assert out["quick"]["command_s"]["median"] == 29.9 and out["quick"]["wall_s"]["max"] == 28.0
    assert 25.0 < out["quick"]["command_s"]["p10"] < out["quick"]["command_s"]["p90"] < 31.0  # within the runs
    assert out["quick"]["phase_median_s"] == {"launch": 2.2, "sweeps": 1.0}  # a phase a run lacks counts 0
    assert list(out["full"]["phase_median_s"]) == ["sweeps", "launch"]  # the largest first


def test_bad_modes_and_a_failing_calibration_are_one_line(tmp_path):
    assert ct.modes("quick, full,quick-shm") == ["quick", "full", "quick-shm"] and set(ct.FLAGS) == set(ct.TARGET_S)
    assert ct.FLAGS["quick-shm"] == ["--quick", "--shm"] and ct.FLAGS["full"] == []
    with pytest.raises(argparse.ArgumentTypeError, match="modes 'fast': expected a comma-separated list of quick, full, quick-shm"):
        ct.modes("fast")
    with pytest.raises(SystemExit, match=r"qroute calibrate \(quick\) exited with 2: .*instances"):
        ct.run_once("quick", 1, tmp_path, "t", timeout_s=120)

