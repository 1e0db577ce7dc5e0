"""`qroute demo` from the command line: a small run end to end, and bad input before any process starts."""

import json
import subprocess
import sys

import pytest

SMALL = ["--layers", "1", "--hidden", "64", "--corpus-tokens", "2048", "--chunk-blocks", "8", "--requests", "2",
         "--steps", "1,3", "--batch", "2"]  # fmt: skip


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qroute", "demo", *args], capture_output=True, text=True, timeout=240, cwd=cwd)


@pytest.mark.timeout(300)
def test_small_demo_json(tmp_path):
    r = run(*SMALL, "--instances", "2", "--modes", "predicate,route,fetch", "--profile", "published-h100", "--json",
            "--out", str(tmp_path), "--tag", "box-7")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert all(p.split("/")[-1].startswith("demo-box-7-") for p in out["files"]), out["files"]
    assert set(out["summary"]) == {"predicate", "route", "fetch"}
    assert all(m["exact"] for m in out["summary"].values())
    names = sorted(p.split("/")[-1].split("-", 2)[-1] for p in out["files"])
    assert any(n.endswith(".json") for n in names) and sum(n.endswith(".png") for n in names) == 2
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["runs"] and saved["profile"]["name"] == "published-h100"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--corpus-dir", "/no/such/dir"], "corpus dir '/no/such/dir' is not a directory"),
        (["--model", "deepseek-v4-flash"], "the runtime runs MLA models"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--instances", "2", "--requesters", "3"], "requesters=3: expected <= instances=2"),
        (["--profile", "/no/profile.json"], "unknown profile '/no/profile.json'"),
        (["--modes", "route,teleport"], "mode 'teleport'"),
        (["--steps", "0"], "--steps: 0 is out of range"),
    ],
)
def test_bad_demo_input_is_one_line_exit_2(args, needle):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(300)
def test_demo_over_shared_memory_measures_both_paths_and_stays_exact(tmp_path):
    r = run(*SMALL, "--instances", "2", "--modes", "route,fetch", "--shm", "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert all(m["exact"] for m in out["summary"].values())
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(saved["profile"]["paths"]) == {"gloo-loopback", "shm"}  # the quick calibration measured both
    used = {t.get("path") for run in saved["runs"] for t in run["trace"] if t.get("kind") in ("route", "fetch")}
    planned = {h["path"] for run in saved["runs"] for p in run["plans"] if p for h in p["holders"]}
    assert used and used == planned <= {"gloo-loopback", "shm"}  # every message went where its plan said
