"""`qroute simulate`: the --json contract, what-if sweeps, errors before any simulation, corpus-less trace replay."""

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from qroute import cli_sim
from qroute.cli import build_parser, main
from qroute.cost import load_profile
from qroute.errors import QrouteError

SMALL = ["simulate", "--nodes", "1", "--gpus-per-node", "3", "--requesters", "1", "--agents", "4", "--steps", "2",
         "--decode-steps", "4", "--chunks", "4", "--chunk-tokens", "256", "--policy", "always-route,predicate"]  # fmt: skip


def exit_code(argv) -> int:
    """main's return code, or the one argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def run_json(capsys, tmp_path, *extra) -> dict:
    assert main([*SMALL, "--out", str(tmp_path), "--tag", "t", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def no_simulation(monkeypatch):
    def refuse(config):
        raise AssertionError("simulated a configuration that should have been refused")

    monkeypatch.setattr(cli_sim, "simulate", refuse)


def test_json_keys_and_files(capsys, tmp_path):
    out = run_json(capsys, tmp_path)
    assert set(out["policies"]) == {"always-route", "predicate"}
    for p in out["policies"].values():
        assert p["throughput"] > 0 and 0 < p["mean_s"] <= p["p99_s"]
        assert set(p["bytes"]) == {"route", "fetch"} and p["bytes"]["route"] > 0
        assert 0 < p["holder_utilisation_max"] <= 1 and "cache_hit_rate" in p and "port_utilisation_max" in p
        assert "latency_cdf" not in p  # in the JSON file, not on stdout
    assert out["cluster"]["instances"] == 3 and out["cluster"]["requesters"] == [0]
    assert out["workload"]["requests"] == 8 and out["workload"]["session_steps"] == 32
    assert out["what_if"] is None and out["trace_errors"] == []
    stem = f"sim-t-{dt.date.today():%Y-%m-%d}"
    ends = (".json", ".csv", "-latency-cdf.png", "-holder-util.png", "-link-util.png", "-crossover-network.png",
            "-crossover-shape.png")  # fmt: skip
    assert out["files"] == [str(tmp_path / f"{stem}{end}") for end in ends]
    assert all((tmp_path / f"{stem}{end}").stat().st_size > 0 for end in ends)


def test_what_if_runs_one_simulation_per_value(capsys, tmp_path, monkeypatch):
    calls = []
    real = cli_sim.simulate
    monkeypatch.setattr(cli_sim, "simulate", lambda config: calls.append(config.profile) or real(config))
    out = run_json(capsys, tmp_path, "--what-if", "paths.nvlink4.alpha_s=2e-6,8e-6,3e-5")
    assert [p.paths["nvlink4"].alpha_s for p in calls] == [2e-6, 8e-6, 3e-5]
    assert all(p.provenance == "what-if" for p in calls)
    runs = out["what_if"]["runs"]
    assert out["what_if"]["constant"] == "paths.nvlink4.alpha_s" and [r["value"] for r in runs] == [2e-6, 8e-6, 3e-5]
    route = [r["policies"]["always-route"]["mean_s"] for r in runs]
    assert route[0] < route[1] < route[2]  # a slower probe, slower routed steps
    assert out["policies"] == runs[0]["policies"]
    assert any(f.endswith("-what-if.png") for f in out["files"])


@pytest.mark.parametrize("flag, needle", [
    ("paths.ibgdx.alpha_s=1e-6", "no entry 'ibgdx' under paths: expected one of ibgda, nvlink4"),
    ("paths.ibgda.alpha_s=2e-6,-1e-6", "paths.ibgda.alpha_s=-1e-06: expected a finite number >= 0"),
    ("paths.ibgda.source=1", "no number 'source' under paths.ibgda"),
    ("model.layers=3", "expected paths.<path>.<field> or compute.<kernel>.<field>"),
    ("paths.ibgda.alpha_s=", "expected CONSTANT=V1,V2,..."),
])  # fmt: skip
def test_what_if_refuses_bad_constants_with_one_line(capsys, tmp_path, no_simulation, flag, needle):
    assert exit_code([*SMALL, "--out", str(tmp_path), "--json", "--what-if", flag]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, needle", [
    (["--intra", "nvlink5"], "unknown intra-node path 'nvlink5'"),
    (["--nodes", "2", "--gpus-per-node", "2", "--inter", "roce"], "unknown inter-node path 'roce'"),
    (["--holder-capacity", "0"], "--holder-capacity: 0 is out of range"),
    (["--instances", "12", "--nodes", "5"], "--instances 12 with 5 node(s) x 3 GPUs = 15"),
    (["--requesters", "3"], "requesters=3 on 3 instances: expected at most 2"),
    (["--replicas", "2"], "replicas=2: expected an integer >= 0 and < holders=2"),
    (["--chunk-tokens", "100"], "chunk tokens=100: expected a multiple of block size=64"),
])  # fmt: skip
def test_bad_configs_exit_2_before_simulating(capsys, tmp_path, no_simulation, flags, needle):
    assert exit_code([*SMALL, "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_instances_alone_picks_the_fewest_nodes_of_at_most_8_gpus():
    def topo(*argv):
        return cli_sim.topology_of(build_parser().parse_args(["simulate", *argv]))

    assert (topo().nodes, topo().gpus_per_node) == (2, 4)
    assert [(t.nodes, t.gpus_per_node) for t in (topo("--instances", "3"), topo("--instances", "24"),
                                                 topo("--instances", "12"), topo("--instances", "12", "--nodes", "3"))] \
        == [(1, 3), (3, 8), (2, 6), (3, 4)]  # fmt: skip


def test_what_if_profile_sets_nested_constants():
    base = load_profile("published-h100")
    p = cli_sim.what_if_profile(base, "compute.attention.flops_per_s", 1e14)
    assert p.compute.attention.flops_per_s == 1e14 and p.provenance == "what-if" and "flops_per_s=1e+14" in p.name
    assert p.paths == base.paths and base.compute.attention.flops_per_s == 6.6e14
    with pytest.raises(QrouteError, match="expected a finite number >= 0"):
        cli_sim.what_if_profile(base, "paths.ibgda.alpha_s", float("inf"))


# ----------------------------------------------------------------------------- trace replay

HEADER = {"schema": "qroute.trace/1", "block_size": 16, "num_blocks": 14, "chunks": 4}
CHUNKS = [(0, 3), (3, 5), (8, 2), (10, 4)]  # (first block, blocks): what the corpus had


def record(i, chunk, blocks, steps, agent=0, sparse=False):
    tokens = CHUNKS[chunk][1] * 16 - 5  # the last block of a chunk is partly filled
    return {"agent": agent, "arrival_s": 0.01 * i, "id": i, "chunk": chunk, "blocks": blocks, "chunk_tokens": tokens,
            "steps": steps, "sparse": sparse, "step_tokens": 1, "task": [1, 2, 3], "first_token": 4}  # fmt: skip


def test_trace_layout_rebuilds_the_corpus_tiling():
    timed = [SimpleNamespace(request=SimpleNamespace(**record(i, c, b, 2))) for i, (c, b) in
             enumerate([(0, [0, 1, 2]), (1, [4, 6]), (3, [11, 12])])]  # chunk 2 unseen, 1 and 3 sparse  # fmt: skip
    layout = cli_sim.trace_layout(HEADER, timed)
    assert layout.first == (0, 3, 8, 10) and layout.blocks == (3, 5, 2, 4) and layout.num_blocks == 14


def test_trace_replay_reports_a_bad_line_and_simulates_the_rest(capsys, tmp_path):
    good = [record(0, 0, [0, 1, 2], 3, agent=0), record(1, 1, [3, 4, 5, 6, 7], 2, agent=1),
            record(2, 3, [10, 11, 12, 13], 4, agent=0), record(3, 2, [8, 9], 1, agent=1)]  # fmt: skip
    lines = [json.dumps(HEADER), json.dumps(good[0]), '{"agent": 0, "id": 9, "blocks": [1]', *map(json.dumps, good[1:])]
    trace = tmp_path / "w.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    out = run_json(capsys, tmp_path, "--trace", str(trace))
    assert len(out["trace_errors"]) == 1 and f"{trace}:3:" in out["trace_errors"][0]
    assert out["workload"]["requests"] == 4 and out["workload"]["session_steps"] == 3 + 2 + 4 + 1
    assert out["workload"]["source"] == str(trace)
    for p in out["policies"].values():
        assert p["session_steps"] == 10 and p["throughput"] > 0


def test_trace_layout_holds_every_request_of_random_corpora():
    import random

    rng = random.Random(0)
    for _ in range(50):
        sizes = [rng.randint(1, 6) for _ in range(rng.randint(1, 8))]
        firsts = [sum(sizes[:i]) for i in range(len(sizes))]
        header = {**HEADER, "num_blocks": sum(sizes), "chunks": len(sizes)}
        timed = []
        for c in rng.sample(range(len(sizes)), rng.randint(1, len(sizes))):
            span = range(firsts[c], firsts[c] + sizes[c])
            blocks = sorted(rng.sample(span, rng.randint(1, sizes[c])))
            rec = {"chunk": c, "blocks": blocks, "chunk_tokens": sizes[c] * 16 - rng.randint(0, 15)}
            timed.append(SimpleNamespace(request=SimpleNamespace(**rec)))
        layout = cli_sim.trace_layout(header, timed)
        assert layout.num_blocks == sum(sizes) and min(layout.blocks) >= 0
        for t in timed:
            r = t.request
            assert layout.first[r.chunk] <= r.blocks[0] and r.blocks[-1] < layout.first[r.chunk] + layout.blocks[r.chunk]
        if len(timed) == len(sizes):  # every chunk seen: the corpus's own tiling
            assert list(layout.first) == firsts and list(layout.blocks) == sizes
