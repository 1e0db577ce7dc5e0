"""`qroute calibrate` and `qroute validate` end to end on small grids, and their failures."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from qroute.calibration import calibrate as cal
from qroute.calibration import grid
from qroute.calibration.calibrate import CalibrationConfig, run_calibration
from qroute.cost import profile as prof
from qroute.errors import QrouteError
from qroute.runtime.launcher import ClusterSpec
from qroute.runtime.world import WorldSpec
from qroute.workload.corpus import CorpusSpec

pytestmark = pytest.mark.timeout(300)
SMALL = WorldSpec(layers=1, hidden=64, heads=4, corpus=CorpusSpec(max_tokens=4096, block_size=8, chunk_blocks=32))


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "qroute", *args], capture_output=True, text=True, timeout=280,
                          cwd=cwd, env=env)  # fmt: skip


def test_quick_calibration_writes_a_valid_measured_profile(tmp_path):
    results = run_calibration(CalibrationConfig(ClusterSpec(2, timeout_s=60.0), SMALL, quick=True, progress=False))
    p = prof.from_dict(results["profile"], "calibration")
    assert p.provenance == "measured" and p.machine["fabric"].startswith("gloo")
    path = p.path("gloo-loopback")
    assert 1e-6 < path.alpha_s < 0.1 and path.beta_Bps > 1e6
    for name in ("attention", "local_attention", "merge", "splice", "gather", "reprefill"):
        assert results["profile"]["fits"][name]["median_ape"] < 0.5
    assert len(results["latency"]["gloo-loopback"]) >= 5 and results["bandwidth"]["gloo-loopback"]
    fit = results["profile"]["fits"]["path"]["gloo-loopback"][0]
    own = fit.get("fetch")  # the fetches on a line of their own, or on the route exchanges' with an offset
    fetched = sorted(b for b, _ in own["points"]) if own else sorted(b for (b, _), o in zip(fit["points"], fit["origins"]) if o == "fetch")
    assert fetched[-1] >= 3.9 * fetched[-2]  # the wide fetch (4x the largest chunk) widens the in-situ line
    routed = sorted({b for (b, _), o in zip(fit["points"], fit["origins"]) if o == "route"})
    # the smallest route exchange is one step token's rows; the largest the wide batch's (3 x 24 step tokens)
    assert routed[-1] == pytest.approx(grid.TRAIN_BATCH * grid.TRAIN_WIDE_ROUTE[0] * routed[0]) and min(grid.TRAIN_STEP_TOKENS) == 1
    assert results["profile"]["paths"]["gloo-loopback"]["knots"][-1][0] == routed[-1]
    phases = results["phase_s"]  # where the time went: the start, each part of the training pass, the fits
    assert {"launch", "holders_ready", "sweeps", "warm_up", "speed_probes", "route", "fetch", "local", "fits"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= results["wall_s"] * 1.01


def test_a_holder_gone_mid_sweep_is_a_clear_error_and_keeps_the_partial_sweep(tmp_path):
    partial = tmp_path / "partial.json"
    config = CalibrationConfig(ClusterSpec(2, timeout_s=30.0), SMALL, quick=True, progress=False, partial=str(partial),
                               holder_stops_after=25)  # fmt: skip
    with pytest.raises(QrouteError, match="path 'gloo-loopback' failed mid-sweep .* kept in"):
        run_calibration(config)
    kept = json.loads(partial.read_text())
    assert kept["partial"] and 1 <= len(kept["latency"]["gloo-loopback"]) < 6


def test_calibration_paths_take_turns_repeat_by_repeat(monkeypatch):
    """Every path's sweeps first, then the training repeats with the paths taking turns (each first every other
    repeat), each repeat's trace and speed probes kept under its path; a path failing in training names itself."""
    served = []

    def train(world, shapes, advance, seed, path, probes, links=None, ladder=True, seconds=None, samples=grid.FULL,
              first=True):
        expected = grid.QUICK if config.quick else grid.FULL
        assert samples == (replace(expected, **grid.EVERY_SHAPE) if config.every_shape else expected) and seconds is not None
        served.append((path, seed))
        shares.setdefault(path, shapes)
        by_repeat[path, seed] = shapes
        firsts.append(first)
        probes += [{"route": 1.0}, {"route": 1.0}]
        if path == "b" and seed == 2 and fail:
            raise ConnectionError("peer closed")
        return [{"path": path, "seed": seed}]

    monkeypatch.setattr(cal, "train_grid", train)
    monkeypatch.setattr(cal, "_results", lambda config, world, peer, latency, bandwidth, traces, probes, fabric:
                        {"traces": traces, "probes": probes, "spread": {n: {} for n in traces}})  # fmt: skip
    monkeypatch.setattr(cal.KeepAlive, "of", classmethod(lambda cls, world, timeout_s: lambda *_: None))
    swept, shares, firsts, by_repeat = [], {}, [], {}
    config = CalibrationConfig(ClusterSpec(3), SMALL, repeats=3, progress=False)
    fail = False
    out = cal.measure_paths(config, None, ["a", "b"], 1, lambda name, *_: swept.append((name, len(served))))
    traces, probes = out["traces"], out["probes"]
    assert {"sweeps", "fits"} <= set(out["phase_s"])
    assert swept == [("a", 0), ("b", 0)]
    assert served == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert firsts == [True, False] * 3  # each repeat's first pass warms the machine up
    every = grid.train_shapes()  # the full calibration: each repeat the paths share the shapes out, the shares rotating
    for r in range(3):
        assert sorted(by_repeat["a", r] + by_repeat["b", r]) == sorted(every) and not set(by_repeat["a", r]) & set(by_repeat["b", r])
    assert by_repeat["a", 0] == by_repeat["b", 1] == by_repeat["a", 2] and by_repeat["b", 0] == by_repeat["a", 1]
    assert [r["seed"] for t in traces["b"] for r in t] == [0, 1, 2] and len(probes["a"]) == 6
    assert out["spread"] == {"a": {"shares": True}, "b": {"shares": True}}  # its repeat spread mixes shapes with repeats
    served[:], by_repeat = [], {}  # --every-shape: every path serves every shape in every repeat
    config = replace(config, every_shape=True)
    out = cal.measure_paths(config, None, ["a", "b"], 1, lambda *_: None)
    assert len(served) == 6 and all(shapes == every for shapes in by_repeat.values())
    assert out["spread"] == {"a": {"shares": False}, "b": {"shares": False}}
    config = replace(config, every_shape=False)
    full, config, served[:], shares = config, replace(config, quick=True), [], {}  # --quick: one repeat, the paths
    cal.measure_paths(config, None, ["a", "b"], 1, lambda *_: None)  # share out the grid
    assert served == [("a", 0), ("b", 0)] and shares == grid.path_shapes(grid.train_shapes(grid.QUICK_CHUNK_BLOCKS), ["a", "b"], True)
    assert len(shares["a"]) == len(grid.train_shapes(grid.QUICK_CHUNK_BLOCKS)) // 2
    fail, served[:], config = True, [], full
    with pytest.raises(QrouteError, match="path 'b' failed mid-sweep \\(ConnectionError: peer closed\\)"):
        cal.measure_paths(replace(full, partial=os.devnull), None, ["a", "b"], 1, lambda *_: None)


@pytest.mark.parametrize("flags, every", [((), False), (("--every-shape",), True)])
def test_every_shape_flag_reaches_the_calibration(monkeypatch, tmp_path, flags, every):
    """`qroute calibrate --every-shape` sets `CalibrationConfig.every_shape` (the paths then serve every shape)."""
    from qroute import cli

    seen = []
    monkeypatch.setattr(cli.forks, "start", lambda: None)
    monkeypatch.setattr(cal, "run_calibration", lambda config: seen.append(config) or {"rank": 1})
    assert cli.main(["calibrate", "--shm", *flags, "--out", str(tmp_path)]) == 0
    assert [c.every_shape for c in seen] == [every]


def test_unreachable_peer_under_torchrun_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    r = run("calibrate", "--quick", "--timeout", "3", "--out", str(tmp_path), env=env)
    assert r.returncode == 2, r.stderr
    assert "could not reach the other 1 instance(s) at 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


def test_validate_cli_small_grid_and_bad_profiles(tmp_path):
    small = ["--layers", "1", "--hidden", "64", "--block-size", "8"]
    r = run("calibrate", "--quick", "--quiet", *small, "--keep-trace", "--out", str(tmp_path), "--tag", "t")
    assert r.returncode == 0, r.stderr
    (trace_file,) = tmp_path.glob("trace-t-*.json")  # --keep-trace: per path, per training run, its records
    (runs,) = json.loads(trace_file.read_text()).values()
    routes = [rec for run_ in runs for rec in run_ if rec["kind"] == "route"]
    assert routes and all(rec["t_post"] > 0 and rec["holder_start"] for rec in routes)
    ladder = [rec for rec in routes if rec.get("ladder")]  # the idle ladder's requests, tagged for the stall count
    assert ladder and len(ladder) < len(routes) and any(rec["first_step"] for rec in ladder)
    assert "trace" not in json.loads(next(tmp_path.glob("calibration-t-*.json")).read_text())
    profile = json.loads(next(tmp_path.glob("profile-t-*.json")).read_text())
    other = tmp_path / "other"  # not profile-*.json in --out: the validated profile stays the calibration's
    other.mkdir()
    slow = json.loads(json.dumps(profile))
    for spec in slow["paths"].values():  # every route exchange priced 3x its probe
        spec["alpha_s"] *= 3
        spec["knots"] = [[b, 3 * t] for b, t in spec.get("knots", [])]
        if "small" in spec:
            spec["small"]["alpha_s"] *= 3
    (other / "same.json").write_text(json.dumps(profile))
    (other / "slow.json").write_text(json.dumps(slow))
    r = run("validate", "--quiet", "--json", *small, "--step-tokens", "1,4", "--chunk-blocks", "4,16", "--steps", "1",
            "--reps", "1", "--max-reps", "1", "--out", str(tmp_path), "--tag", "t",
            "--compare", f"{other / 'same.json'},{other / 'slow.json'}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    same, slower = out["compared"]["same"], out["compared"]["slow"]  # the same runs priced by each
    assert (same["median_ape"], same["p90_ape"], same["hit_rate"]) == (out["median_ape"], out["p90_ape"], out["hit_rate"])
    assert slower["median_ape"] != out["median_ape"] and slower["per_path"]["gloo-loopback"]["n"] == out["per_path"]["gloo-loopback"]["n"]
    assert {"median_ape", "p90_ape", "hit_rate", "regret", "per_path", "per_primitive", "per_phase", "signed"} <= set(out)
    assert out["per_path"]["gloo-loopback"]["n"] > 0 and 0 <= out["regret"] < 10
    assert any(Path(f).suffix == ".csv" for f in out["files"]) and sum(Path(f).suffix == ".png" for f in out["files"]) == 2
    assert set(out["per_holders"]) == {"1", "2"} and set(out["per_batch"]) == {"1", "3"}
    rows = json.loads(next(tmp_path.glob("validation-t-*.json")).read_text())["rows"]
    assert all(r["predicted_spread"] == 0.0 and r["predicted"]["total_s"] > 0 for r in rows)  # one run: one prediction
    assert all(r["compared"]["same"] == r["predicted"] for r in rows)
    routed = [r for r in rows if r["primitive"] == "route"]
    assert routed and all(r["compared"]["slow"]["network_s"] > r["predicted"]["network_s"] for r in routed)
    assert all(r["compared"]["slow"]["network_s"] == r["predicted"]["network_s"] for r in rows if r["primitive"] == "local")
    (validation,) = tmp_path.glob("validation-t-*.json")  # its runs' plans, priced again from the file
    r = run("reprice", str(validation), str(other / "slow.json"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compared"]["slow"] == out["compared"]["slow"]
    r = run("reprice", str(validation), "published-h100")  # it prices none of the runs' paths: nothing to score
    assert r.returncode == 2 and "has no path 'gloo-loopback'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    batched = [r for r in rows if r["batch"] == 3]  # 4-block chunks (below the largest), 3 requests decoded together
    assert {r["chunk_tokens"] for r in batched} == {4 * 8} and {r["primitive"] for r in batched} == {"route", "fetch", "local"}
    assert all(r["max_rel_err"] < 1e-4 for r in rows)  # every request of every batch against the oracle
    r = run("validate", "--quiet", "--json", *small, "--instances", "2", "--step-tokens", "1", "--chunk-blocks", "4",
            "--steps", "1", "--reps", "1", "--max-reps", "1", "--out", str(tmp_path), "--tag", "t2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["per_holders"]) == {"1"}  # 2 instances (2 GPUs under NCCL): one holder only
    r = run("validate", "--compare", "published-h100", "--out", str(tmp_path))  # it prices none of the paths
    assert r.returncode == 2 and "compare profile 'published-h100' has no path 'gloo-loopback'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    corrupt, foreign = tmp_path / "corrupt.json", tmp_path / "foreign.json"
    corrupt.write_text(json.dumps(profile)[:-40])
    foreign.write_text(json.dumps({**profile, "schema": "qroute.profile/99"}))
    for bad, needle in ((corrupt, "not valid JSON"), (foreign, "expected 'qroute.profile/14'")):
        r = run("validate", "--profile", str(bad), "--out", str(tmp_path))
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_median_ci_is_the_order_statistics_interval():
    from qroute.calibration.validation_metrics import median_ci

    assert median_ci([1.0, 2.0]) == float("inf")  # too few runs to bound the median
    assert median_ci([10.0, 9.0, 11.0, 10.0, 30.0]) == pytest.approx((30 - 9) / 2 / 10)  # 5 runs: the extremes
    runs = [100.0 + i for i in range(25)]  # 25 runs: the 8th and 18th smallest (~95% coverage)
    assert median_ci(runs) == pytest.approx((117 - 107) / 2 / 112)
    assert median_ci([5.0] * 9) == 0.0


@pytest.mark.parametrize("bad, match", [(dict(reps=5, max_reps=3), "max reps=3: expected >= reps=5"),
                                        (dict(ci=0.0), "ci=0.0: expected a fraction"),
                                        (dict(budget_s=0.0), "budget=0.0 s: expected a positive"),
                                        (dict(share_floor=0.0), "share floor=0.0: expected a fraction in")])  # fmt: skip
def test_validation_config_rejects_bad_repetition_settings(bad, match):
    from qroute.calibration.validate import ValidationConfig

    with pytest.raises(QrouteError, match=match):
        ValidationConfig("published-h100", **bad)


def test_passes_interleave_the_paths_and_share_the_budget():
    from types import SimpleNamespace

    from qroute.calibration.validate import ValidationConfig, run_passes

    clock, calls = [0.0], []
    lanes = [SimpleNamespace(name=n, todo=[(None, {"runs": []}) for _ in range(2)]) for n in ("gloo", "shm")]

    def run_pass(lane, rep):  # every run 10% apart from the last: no median ever settles; a pass takes 1 s
        calls.append((lane.name, rep))
        for _, row in lane.todo:
            row["runs"].append({"total_s": 1.0 + 0.1 * (len(row["runs"]) % 2)})
        clock[0] += 1.0

    config = ValidationConfig("published-h100", reps=2, max_reps=40, ci=0.01, until=9.5)
    rows = {lane.name: [row for _, row in lane.todo] for lane in lanes}
    run_passes(lanes, config, run_pass, clock=lambda: clock[0])
    runs = {name: {len(row["runs"]) for row in r} for name, r in rows.items()}
    assert runs == {"gloo": {5}, "shm": {5}}  # the budget shared: no path takes every further pass
    assert calls[:4] == [("gloo", 0), ("shm", 0), ("shm", 1), ("gloo", 1)]  # in turns, first place alternating
    row = {"runs": []}  # identical runs: settled after the reps
    settled = [SimpleNamespace(todo=[(None, row)])]
    run_passes(settled, ValidationConfig("published-h100", reps=3, max_reps=40), lambda lane, rep: row["runs"].append({"total_s": 1.0}))
    assert len(row["runs"]) == 3 and settled[0].todo == []


def test_further_passes_go_where_the_medians_are_least_known():
    from types import SimpleNamespace

    from qroute.calibration.validate import ValidationConfig, run_passes, shares

    assert shares([[0.2, 0.1], [0.05, float("inf")]], 0.25) == [[1.0, 0.25], [0.25, 1.0]]
    assert shares([[0.2, 0.16]], floor=0.1) == [[1.0, pytest.approx(0.64)]]
    assert shares([[0.0, 0.0]], 0.25) == [[1.0, 1.0]]  # no width to compare against: every one runs
    spread = {"noisy": 0.4, "quiet": 0.1}  # runs alternate 1 +- spread: the quiet one's interval is a quarter as wide
    rows = {name: {"runs": []} for name in spread}
    lane = SimpleNamespace(todo=[(name, rows[name]) for name in spread])
    when, clock = {name: [] for name in spread}, [0.0]

    def run_pass(lane, rep):  # a pass takes 1 s
        for name, row in lane.todo:
            row["runs"].append({"total_s": 1.0 + spread[name] * (-1) ** len(row["runs"])})
            when[name].append(rep)
        clock[0] += 1.0

    config = ValidationConfig("published-h100", reps=4, max_reps=100, ci=0.01, share_floor=0.25, until=23.5)  # 24 passes
    run_passes([lane], config, run_pass, clock=lambda: clock[0])
    assert len(rows["noisy"]["runs"]) == 24  # every pass
    assert len(rows["quiet"]["runs"]) == 4 + 5  # every 4th further pass (the floor share): still spread over the sweep
    assert when["quiet"][4:] == list(range(7, 24, 4))


def test_a_budgeted_setup_may_run_its_budget_and_the_usual_margin():
    import time

    from qroute.calibration.validate import _lasting

    spec = ClusterSpec(2, timeout_s=300.0)
    assert _lasting(spec, None) is spec  # no budget: a launch is taken as hung after 2 x its timeout
    budgeted = _lasting(spec, time.time() + 900.0)  # a fabric's one setup with --budget 900: it must not read as hung
    assert 1499.0 < budgeted.run_s <= 1500.0 and budgeted.timeout_s == 300.0


def test_online_metric_replays_runs_in_the_order_they_ran():
    from qroute.calibration.validation_metrics import online

    def row(prim, order, measured_network):
        predicted = {"network_s": 1e-3, "compute_s": 1e-3, "merge_s": 0.0, "total_s": 2e-3}
        phases = [{"network_s": n, "compute_s": 1e-3, "merge_s": 0.0} for n in measured_network]
        return {"holders": 1, "pass": "p", "path": "p", "primitive": prim, "predicted": predicted, "run_order": order,
                "measured_phases": phases, "measured": {"total_s": 1e-3 + sorted(measured_network)[len(order) // 2]}}  # fmt: skip

    # a machine 50% slower on the network than calibrated: the first run of each primitive is priced statically
    rows = [row("route", [0, 2, 4], [1.5e-3] * 3), row("route", [1, 3, 5], [1.5e-3] * 3), row("fetch", [6], [1.5e-3])]
    out = online(rows)
    assert out["n"] == 3 and out["window"] == 16
    assert out["per_primitive"]["route"]["median_ape"] == pytest.approx(0.0)  # medians of runs 2..5, all learned
    assert out["per_primitive"]["fetch"]["median_ape"] == pytest.approx(0.5 / 2.5)  # nothing learned for fetch yet
    assert online([{**r, "run_order": None} for r in rows]) == {}


def test_signed_errors_are_medians_per_primitive_holders_and_phase():
    from qroute.calibration.validation_metrics import signed_errors

    def row(prim, holders, compute_measured):
        predicted = {"network_s": 1e-3, "compute_s": 1e-3, "merge_s": 1e-4, "total_s": 2.1e-3}
        measured = {"network_s": 1e-3, "compute_s": compute_measured, "merge_s": 0.0,
                    "total_s": 1.1e-3 + compute_measured}  # fmt: skip
        return {"primitive": prim, "holders": holders, "predicted": predicted, "measured": measured}

    rows = [row("fetch", 1, c) for c in (1.25e-3, 1.1e-3, 1.0e-3)] + [row("local", 1, 1e-3), row("fetch", 2, 0.8e-3)]
    out = signed_errors(rows)
    assert out["fetch"]["1"]["compute_s"] == pytest.approx(1 / 1.1 - 1)  # the median configuration: 9% low
    assert out["fetch"]["1"]["network_s"] == 0.0 and out["fetch"]["1"]["merge_s"] is None  # nothing measured: none
    assert out["fetch"]["2"]["compute_s"] == pytest.approx(0.25) and out["local"]["1"]["compute_s"] == 0.0
    assert set(out) == {"fetch", "local"} and set(out["fetch"]) == {"1", "2"}


def test_the_level_floor_takes_out_one_factor_per_path_primitive_and_holders():
    from qroute.calibration.validation_metrics import level_floor

    def row(path, prim, measured, predicted):
        return {"pass": path, "path": path, "primitive": prim, "holders": 1, "measured": {"total_s": measured},
                "predicted": {"total_s": predicted}}  # fmt: skip

    # gloo's routes all ran 1.2x their price, shm's 0.9x: levels, which the floor takes out
    rows = [row("gloo", "route", 1.2 * t, t) for t in (1.0, 2.0, 3.0)] + [row("shm", "route", 0.9 * t, t) for t in (1.0, 2.0)]
    got = level_floor(rows)
    assert got["p90_ape"] < 1e-12 and got["n"] == 5 and set(got["per_path"]) == {"gloo", "shm"}
    shaped = level_floor([row("gloo", "fetch", m, 1.0) for m in (1.0, 2.0, 3.0)])  # one shape priced off: it stays
    assert shaped["median_ape"] == pytest.approx(1 / 3) and shaped["per_path"]["gloo"]["n"] == 3


def test_validate_auto_builds_a_corpus_the_training_grid_fits(tmp_path):
    # the sweep's chunks (4 blocks) are smaller than calibration's training grid needs: the corpus fits both
    r = run("validate", "--profile", "auto", "--quiet", "--json", "--layers", "1", "--hidden", "64", "--block-size", "8",
            "--instances", "2", "--step-tokens", "1", "--chunk-blocks", "4", "--steps", "1", "--reps", "1",
            "--max-reps", "1", "--out", str(tmp_path), "--tag", "a")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 3 and next(tmp_path.glob("profile-a-auto-*.json"))



def test_quick_calibration_over_two_paths_fits_each_on_its_share():
    """`--quick --shm`: the two paths share out the training grid (`grid.path_shapes`), and each still gets its line
    through route exchanges of every step-token count and fetches of every chunk size."""
    results = run_calibration(CalibrationConfig(ClusterSpec(2, timeout_s=60.0, shm=True), SMALL, quick=True, progress=False))
    p = prof.from_dict(results["profile"], "calibration")
    assert set(results["profile"]["paths"]) == {"gloo-loopback", "shm"}
    sizes = {}
    for name in ("gloo-loopback", "shm"):
        assert 1e-6 < p.path(name).alpha_s < 0.1 and p.path(name).beta_Bps > 1e6
        fit = results["profile"]["fits"]["path"][name][0]
        routed = {b for (b, _), o in zip(fit["points"], fit["origins"]) if o == "route"}
        own = fit.get("fetch")
        fetched = {b for b, _ in own["points"]} if own else {b for (b, _), o in zip(fit["points"], fit["origins"]) if o == "fetch"}
        sizes[name] = (routed, fetched)
        assert len(routed) >= len(grid.TRAIN_STEP_TOKENS) and len(fetched) >= len(grid.QUICK_CHUNK_BLOCKS) + 1
    (route_a, fetch_a), (route_b, fetch_b) = sizes.values()  # the same exchange sizes from different shapes (the
    assert route_a == route_b and len(fetch_a & fetch_b) >= len(grid.QUICK_CHUNK_BLOCKS) + 1  # scattered: per fit)
