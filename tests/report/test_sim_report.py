"""`qroute simulate` reporting: the tables, the files and plots, and the planner's crossover maps."""

import datetime as dt
import json

import pytest
from rich.console import Console

from qroute.cli import build_parser
from qroute.cli_sim import run
from qroute.cost import CostModel, load_profile
from qroute.geometry import preset
from qroute.report.sim import network_crossover, policies_table, shape_crossover, summary_json, what_if_table, write_sim

PNG = b"\x89PNG\r\n\x1a\n"
MODEL = CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))
DECODE = {"rows": 16, "tokens": 8192, "steps": 16, "offset": 256, "sparse": False, "prefill": 8192}


@pytest.fixture(scope="module")
def results():
    args = build_parser().parse_args([
        "simulate", "--nodes", "2", "--gpus-per-node", "3", "--requesters", "2", "--agents", "8", "--steps", "2",
        "--decode-steps", "4", "--chunks", "8", "--chunk-tokens", "512", "--policy", "always-route,always-fetch,reuse",
        "--what-if", "paths.ibgda.beta_Bps=1e10,1e11", "--quiet"])  # fmt: skip
    return run(args)


def render(table, width=120) -> str:
    console = Console(record=True, width=width)
    console.print(table)
    return console.export_text()


def test_policies_table_renders_every_policy_on_one_line(results):
    text = render(policies_table(results))
    assert "2 node(s) x 3 GPUs, 2 requesters" in text and "paths.ibgda.beta_Bps=1e+10" in text
    rows = [line for line in text.splitlines() if line.startswith("│ ")]
    assert [r.split()[1] for r in rows] == ["always-route", "always-fetch", "reuse"]  # no wrapped rows at 120 columns
    assert sum("*" in r for r in rows) >= 1 and "1.00x" in text
    assert "100/0/0" in rows[0] and "0/100/0" in rows[1]


def test_what_if_table_and_summary(results):
    text = render(what_if_table(results))
    assert "what-if paths.ibgda.beta_Bps" in text and text.count("always-fetch") == 2 and "1e+11" in text
    assert what_if_table({**results, "what_if": None}) is None
    out = summary_json(results)
    assert set(out["policies"]) == {"always-route", "always-fetch", "reuse"}
    assert all("latency_cdf" not in p for r in out["what_if"]["runs"] for p in r["policies"].values())
    fetch = [r["policies"]["always-fetch"]["mean_s"] for r in out["what_if"]["runs"]]
    assert fetch[1] < fetch[0]  # ten times the bandwidth: faster fetches
    json.dumps(out)


def test_files_written(results, tmp_path):
    files = write_sim(results, tmp_path / "out", tag="t")
    stem = f"sim-t-{dt.date.today():%Y-%m-%d}"
    ends = (".json", ".csv", "-latency-cdf.png", "-holder-util.png", "-link-util.png", "-crossover-network.png",
            "-crossover-shape.png", "-what-if.png")  # fmt: skip
    assert [f.name for f in files] == [f"{stem}{e}" for e in ends]
    assert all(f.read_bytes().startswith(PNG) for f in files if f.suffix == ".png")
    data = json.loads(files[0].read_text())
    assert data["policies"]["reuse"]["latency_cdf"] and len(data["what_if"]["runs"]) == 2
    assert len(files[1].read_text().splitlines()) == 1 + 2 * 3  # header, then (value, policy) rows


def test_crossover_shares_sum_to_one(results):
    for grid in results["crossover"].values():
        for i in range(len(grid["y"])):
            for j in range(len(grid["x"])):
                assert sum(grid["shares"][p][i][j] for p in ("route", "fetch", "local")) == pytest.approx(1.0)


def test_route_flips_to_fetch_as_bandwidth_grows():
    mix = [{**DECODE, "weight": 0.75}, {**DECODE, "tokens": 4096, "prefill": 4096, "weight": 0.25}]
    grid = network_crossover(MODEL, mix, "ibgda", probes=(1.6e-5,))  # published IBGDA probe
    route, fetch = grid["shares"]["route"][0], grid["shares"]["fetch"][0]
    assert route[0] == 1.0 and fetch[-1] == 1.0
    assert all(a >= b for a, b in zip(route, route[1:]))  # never back to route once fetch wins
    assert route[5] == pytest.approx(0.75)  # near 46 GB/s the smaller selection has flipped, the larger not yet
    assert grid["current"] == [25e9, 1.6e-5]


def test_rows_by_chunk_route_at_decode_fetch_or_local_for_large_bundles():
    grid = shape_crossover(MODEL, [{**DECODE, "steps": 4, "weight": 1.0}], "ibgda")
    rows, tokens = grid["y"], grid["x"]
    at = lambda prim, r, t: grid["shares"][prim][rows.index(r)][tokens.index(t)]  # noqa: E731
    assert at("route", 16, 2048) == 1.0  # a decode step's rows: route
    assert at("fetch", 4096, 2048) == 1.0  # a large row bundle: move the cache
    assert at("local", 16, 128) == 1.0  # a tiny chunk: re-prefill it rather than pay 4 x 27 round trips
    assert at("route", 8192, 65536) == 1.0  # a huge chunk stays put even for a large bundle


def test_workload_shapes_group_requests_and_keep_the_most_common():
    from qroute.report.sim import MAX_SHAPES, workload_shapes
    from qroute.sim import Layout, SimRequest

    layout = Layout.uniform(4, 8, 64)
    reqs = [SimRequest(0, 0.0, 1, range(8, 16), 4, 256), SimRequest(1, 0.0, 2, range(16, 24), 4, 256),
            SimRequest(2, 0.0, 0, (1, 5), 2, 100, 2, True)]  # fmt: skip
    shapes = sorted(workload_shapes(reqs, layout, heads=16), key=lambda s: -s["weight"])
    assert [(s["rows"], s["tokens"], s["steps"], s["offset"], s["sparse"], s["prefill"]) for s in shapes] == [
        (16, 512, 4, 256, False, 512), (32, 128, 2, 100, True, 384)]  # the sparse one rebuilds blocks 0..5
    assert [s["weight"] for s in shapes] == pytest.approx([2 / 3, 1 / 3])
    many = [SimRequest(i, 0.0, 0, range(0, 8), 4, i) for i in range(40)]  # 40 offsets: 40 shapes
    assert len(workload_shapes(many, layout, 16)) == MAX_SHAPES
    assert sum(s["weight"] for s in workload_shapes(many, layout, 16)) == pytest.approx(1.0)
