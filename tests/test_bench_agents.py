"""`qroute bench-agents` end to end on a small cluster: every policy exact, the numbers consistent, traces replayed."""

import json
import subprocess
import sys

import pytest

from qroute.bench_agents import AgentBenchConfig, run_bench
from qroute.errors import QrouteError
from qroute.runtime.launcher import ClusterSpec
from qroute.runtime.world import WorldSpec
from qroute.workload.corpus import CorpusSpec
from qroute.workload.generator import AgentWorkloadSpec

pytestmark = pytest.mark.timeout(300)
WORLD = WorldSpec(layers=2, hidden=64, heads=4, corpus=CorpusSpec(max_tokens=2048, block_size=8, chunk_blocks=8))


def config(**kw):
    base = dict(cluster=ClusterSpec(3, 1, timeout_s=60.0), world=WORLD, profile="published-h100", progress=False,
                workload=AgentWorkloadSpec(agents=4, steps_per_agent=3, decode_steps=(2,), persistence=0.9, seed=3),
                concurrency=3, check_every=2, cache_blocks=32)  # fmt: skip
    return AgentBenchConfig(**{**base, **kw})


def test_every_policy_serves_the_same_work_exactly(tmp_path):
    trace = tmp_path / "w.jsonl"
    out = run_bench(config(policies=("always-route", "always-fetch", "predicate", "reuse"), record=str(trace)))
    pol = out["policies"]
    assert set(pol) == {"always-route", "always-fetch", "predicate", "reuse"}
    for name, p in pol.items():
        assert p["exact"] and p["checked"] >= 6 // 2 and p["max_rel_err"] <= 1e-4, name
        assert p["requests"] == 12 and p["tokens"] == 12 * 2 and p["throughput"] > 0
        assert 0 < p["p50_s"] <= p["p99_s"] and len(p["step_latencies_s"]) == 12 * 2
    assert pol["always-route"]["bytes"]["route"] > 0 and pol["always-route"]["bytes"]["fetch"] == 0
    assert pol["always-fetch"]["bytes"]["fetch"] > 0 and pol["always-fetch"]["bytes"]["route"] == 0
    assert pol["always-route"]["holder_utilisation"] and all(0 <= u < 1 for u in pol["always-route"]["holder_utilisation"].values())
    cache = pol["reuse"]["cache"]
    assert cache["hits"] + cache["misses"] > 0 and pol["always-fetch"]["cache"] is None
    assert pol["reuse"]["bytes"]["fetch"] <= pol["always-fetch"]["bytes"]["fetch"]  # kept blocks are not moved again
    assert out["workload"]["requests"] == 12 and 0 < out["workload"]["skew"]["top10_share"] <= 1
    assert len(trace.read_text().splitlines()) == 1 + 12  # header + one line per request


def test_a_replayed_trace_with_bad_lines_keeps_the_rest(tmp_path):
    trace = tmp_path / "w.jsonl"
    run_bench(config(policies=("predicate",), record=str(trace), check_every=0))
    lines = trace.read_text().splitlines()
    lines[3] = "{not json"
    lines.append(json.dumps({**json.loads(lines[1]), "blocks": [10**6]}))
    trace.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "qroute", "bench-agents", "--trace", str(trace), "--policy", "predicate,reuse",
                        "--layers", "2", "--hidden", "64", "--block-size", "8", "--corpus-tokens", "2048", "--chunk-blocks", "8",
                        "--profile", "published-h100", "--check-every", "3", "--out", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=280)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    errors = out["trace_errors"]
    assert len(errors) == 2 and "w.jsonl:4:" in errors[0] and f"w.jsonl:{len(lines)}:" in errors[1]
    for p in out["policies"].values():
        assert p["requests"] == 11 and p["exact"] and {"throughput", "p50_s", "p99_s"} <= set(p)
    assert any(f.endswith("-latency-cdf.png") for f in out["files"])


def test_bad_config_is_one_clear_error():
    with pytest.raises(QrouteError, match="unknown policy 'fastest'"):
        config(policies=("predicate", "fastest"))
    with pytest.raises(QrouteError, match="expected at least one holder"):
        config(cluster=ClusterSpec(2, 2))
