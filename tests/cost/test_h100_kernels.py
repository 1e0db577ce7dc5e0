"""The `h100-kernels` profile: built from the committed H100 kernel benchmark, and what its faster splice changes."""

import json
from pathlib import Path


from benchmarks.h100_profile import build
from qroute.cost import CostModel, load_profile
from qroute.cost.predicate import breakevens
from qroute.geometry import preset
from qroute.planner import uniform_request

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_the_shipped_profile_is_what_the_committed_benchmark_gives():
    source = load_profile("h100-kernels").machine["benchmark"]
    rebuilt = build(json.loads((RESULTS / source).read_text()), source)
    assert rebuilt["compute"] == load_profile("h100-kernels").to_dict()["compute"]


def test_a_one_launch_splice_makes_fetch_pay_off_after_fewer_reuse_steps():
    g = preset("deepseek-v2-lite")
    request = uniform_request(16, 2048, 1, g.layers, offset=4096)
    steps = {}
    for name in ("published-h100", "h100-kernels"):
        model = CostModel(g, load_profile(name))
        assert model.splice_s(2048, g.layers) < (1e-3 if name == "h100-kernels" else 10)
        steps[name] = next(b.value for b in breakevens(model, request) if b.quantity.startswith("reuse steps: route vs fetch"))
    assert steps["h100-kernels"] < steps["published-h100"] / 1.5
