"""The CLI: stable JSON, readable tables, one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from qroute.cli import main
from qroute.geometry import preset_config


def run(*args):
    return subprocess.run([sys.executable, "-m", "qroute", *args], capture_output=True, text=True, timeout=120)


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["deepseek-v2-lite"]["q_row_bytes"] == 1152
    assert models["deepseek-v3.2"]["kv_token_layer_bytes"] == {"bf16": 1152, "fp8": 656}
    assert set(models) >= {"deepseek-v2-lite", "deepseek-v3", "deepseek-v3.2", "glm-5.1", "deepseek-v4-flash", "llama-3.1-70b"}


def test_plan_json_contract(capsys):
    args = ["plan", "--model", "deepseek-v2-lite", "--profile", "published-h100", "--rows", "256",
            "--chunk-tokens", "2048", "--holders", "1", "--layers", "1", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["choice"] == "route"
    assert set(out["primitives"]) == {"route", "fetch", "local"}
    for p in out["primitives"].values():
        assert set(p["phases"]) == {"probe", "transfer", "compute", "return", "merge"}
        assert p["total_s"] == pytest.approx(sum(p["phases"].values()))
    assert 31e-6 <= out["primitives"]["route"]["total_s"] <= 48e-6
    assert out["margin_s"] > 0 and out["plan"]["strategy"] == "route"


def test_plan_flags_reach_the_request(capsys):
    main(["plan", "--rows", "16", "--chunk-tokens", "2048", "--holders", "3", "--sparse", "--offset", "-40",
          "--reuse-steps", "5", "--kv-dtype", "fp8", "--paths", "ibgda,nvlink4", "--json"])  # fmt: skip
    req = json.loads(capsys.readouterr().out)["request"]
    assert req == {"rows": 16, "chunk_tokens": 2048, "holders": 3, "layers": 27, "sparse": True, "offset": -40,
                   "reuse_steps": 5, "kv_dtype": "fp8", "paths": ["ibgda", "nvlink4"], "idle_ms": None}  # fmt: skip


def test_idle_holders_wake_up_as_the_profile_measured(tmp_path, capsys):
    """A profile whose path wakes in 50 us after 10 ms idle and 600 us after 100 ms: `--idle-ms` moves route's
    probe by the difference; fetch and local pay no wake-up."""
    import dataclasses

    from qroute.cost import load_profile

    p = load_profile("published-h100")
    ib = dataclasses.replace(p.path("ibgda"), cold_s=5e-5, cold_idle=((0.01, 5e-5), (0.1, 6e-4)))
    dataclasses.replace(p, paths={**p.paths, "ibgda": ib}).save(tmp_path / "idle.json")
    out = {}
    for idle in ("10", "250"):
        main(["plan", "--profile", str(tmp_path / "idle.json"), "--rows", "16", "--chunk-tokens", "512", "--paths", "ibgda",
              "--idle-ms", idle, "--json"])  # fmt: skip
        out[idle] = json.loads(capsys.readouterr().out)
    assert out["250"]["request"]["idle_ms"] == 250.0
    probe = {k: v["primitives"]["route"]["phases"]["probe"] for k, v in out.items()}
    assert probe["250"] - probe["10"] == pytest.approx(5.5e-4)
    for prim in ("fetch", "local"):
        assert out["250"]["primitives"][prim]["total_s"] == out["10"]["primitives"][prim]["total_s"]


def test_reuse_flips_to_fetch_where_explain_says(capsys):
    base = ["--rows", "16", "--chunk-tokens", "2048", "--offset", "4096"]
    main(["explain", *base, "--json"])
    table = json.loads(capsys.readouterr().out)["breakevens"]
    steps = next(b for b in table if b["quantity"] == "reuse steps: route vs fetch")["value"]
    main(["plan", *base, "--reuse-steps", str(int(steps) + 1), "--json"])
    assert json.loads(capsys.readouterr().out)["choice"] == "fetch"
    main(["plan", *base, "--reuse-steps", str(int(steps)), "--json"])
    assert json.loads(capsys.readouterr().out)["choice"] == "route"


def test_tables_print(capsys):
    assert main(["plan", "--rows", "16", "--chunk-tokens", "2048", "--offset", "9"]) == 0
    out = capsys.readouterr().out
    assert "route" in out and "choice: route" in out
    assert main(["explain", "--rows", "16", "--chunk-tokens", "2048", "--paths", "ibgda,nvlink4"]) == 0
    out = capsys.readouterr().out
    assert "Break-even" in out and "nvlink4" in out
    assert main(["models"]) == 0
    assert "deepseek-v2-lite" in capsys.readouterr().out


def test_checkpoint_dir_as_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(preset_config("deepseek-v3")))
    assert main(["plan", "--model", str(tmp_path), "--rows", "8", "--chunk-tokens", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request"]["layers"] == 61


def bad_profile(tmp_path):
    p = tmp_path / "profile.json"
    p.write_text(json.dumps({"schema": "qroute.profile/1", "name": "x", "provenance": "measured"}))
    return str(p)


def bad_config(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"kv_lora_rank": 512, "num_hidden_layers": 4')
    return str(p)


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda t: ["plan", "--model", "gpt-9", "--rows", "1", "--chunk-tokens", "1"], "unknown model 'gpt-9'"),
        (lambda t: ["plan", "--model", bad_config(t), "--rows", "1", "--chunk-tokens", "1"], "not valid JSON"),
        (lambda t: ["plan", "--profile", bad_profile(t), "--rows", "1", "--chunk-tokens", "1"], "required property"),
        (lambda t: ["plan", "--rows", "0", "--chunk-tokens", "1"], "--rows: 0 is out of range"),
        (lambda t: ["plan", "--rows", "4", "--chunk-tokens", "-2"], "--chunk-tokens: -2 is out of range"),
        (lambda t: ["explain", "--rows", "4", "--chunk-tokens", "8", "--holders", "0"], "--holders: 0 is out of range"),
        (lambda t: ["plan", "--rows", "4", "--chunk-tokens", "8", "--layers", "x"], "'x' is not an integer"),
        (lambda t: ["plan", "--rows", "4", "--chunk-tokens", "8", "--paths", "roce"], "unknown path 'roce'"),
        (lambda t: ["plan", "--rows", "4", "--chunk-tokens", "8", "--profile", "nope"], "unknown profile 'nope'"),
        (lambda t: ["plan", "--rows", "4", "--chunk-tokens", "8", "--idle-ms", "-1"], "'-1': expected a number >= 0"),
        (lambda t: ["compare", "published-h100"], "compare got 1 profile: expected 2 or more"),
        (lambda t: ["compare", "published-h100", bad_profile(t)], "required property"),
        (lambda t: ["compare", "published-h100", "h100-kernels", "--tolerance", "2"], "expected a number between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, make_args, needle):
    r = run(*make_args(tmp_path))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_help_explains_itself():
    r = run("plan", "--help")
    assert r.returncode == 0
    for flag in ("--rows", "--chunk-tokens", "--holders", "--layers", "--sparse", "--offset", "--reuse-steps", "--json"):
        assert flag in r.stdout


def test_cluster_commands_start_the_forkserver_before_building_the_parser(monkeypatch):
    """The commands that launch instances start the launcher's forkserver before they import torch (building the
    parser does: its import then runs beside theirs); the others, help, the host tier and torchrun jobs do not."""
    from qroute import cli

    started = []
    monkeypatch.setattr(cli.forks, "start", lambda: started.append("torch" in sys.modules))
    monkeypatch.delenv("RANK", raising=False)
    assert [cli.launches(a.split()) for a in ("calibrate --quick", "validate", "demo --shm", "bench-agents")] == [True] * 4
    for words in ("calibrate --host-tier", "models", "demo --help", "validate -h", "plan --rows 1", ""):
        assert not cli.launches(words.split()), words
    monkeypatch.setenv("RANK", "0")
    assert not cli.launches(["demo"])
    monkeypatch.delenv("RANK")
    assert main(["calibrate", "--quick", "--model", "no-such-model"]) == 2 and len(started) == 1  # still one line
    assert main(["models", "--json"]) == 0 and len(started) == 1


def test_the_cli_imports_no_torch_before_it_parses():
    """`qroute.cli` and `runtime.forks` import no torch: the early forkserver's import runs beside the command's."""
    code = "import sys, qroute.cli, qroute.runtime.forks; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
