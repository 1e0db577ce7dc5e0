"""Policies through the simulator: bytes per primitive, the block cache, determinism, a small scale run."""

import pytest

from qroute.cost import CostModel, load_profile
from qroute.geometry import preset
from qroute.sim import SimConfig, SimWorkload, Topology, prepare, simulate, synthetic

MODEL = CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))
L, HEADS = MODEL.geometry.layers, MODEL.geometry.heads
WORKLOAD = SimWorkload(agents=16, requests_per_agent=3, decode_steps=(4, 16), chunks=16, chunk_blocks=8, persistence=0.8)


def run(**kw):
    kw.setdefault("workload", WORKLOAD)
    return simulate(SimConfig(**kw))


def test_always_route_and_always_fetch_bytes():
    out = run(policies=("always-route", "always-fetch"))
    _, requests = synthetic(WORKLOAD)
    bs = WORKLOAD.block_size
    routed, fetched = out["policies"]["always-route"], out["policies"]["always-fetch"]
    # contiguous placement: each request's chunk lives on one holder
    assert routed["bytes"]["fetch"] == 0 and fetched["bytes"]["route"] == 0
    assert routed["bytes"]["route"] == pytest.approx(sum(r.steps * L * MODEL.route_bytes(HEADS) for r in requests))
    assert fetched["bytes"]["fetch"] == pytest.approx(sum(MODEL.fetch_bytes(len(r.blocks) * bs, L) for r in requests))
    assert routed["choices"]["route"] == fetched["choices"]["fetch"] == len(requests)
    for p in (routed, fetched):
        assert p["session_steps"] == sum(r.steps for r in requests)
        assert p["tokens"] == p["session_steps"]  # one token per step
        assert 0 < p["p50_s"] <= p["p99_s"] <= p["max_s"]
        assert p["throughput"] == pytest.approx(p["tokens"] / p["makespan_s"])


def test_reuse_keeps_fetched_blocks_and_hits_them():
    out = run(policies=("always-fetch", "reuse", "load"), requesters=1)
    reuse, load = out["policies"]["reuse"], out["policies"]["load"]
    assert out["policies"]["always-fetch"]["cache"] is None
    assert reuse["cache"]["inserted"] > 0 and reuse["cache_hit_rate"] > 0.2
    assert reuse["choices"]["cache"] > 0
    assert reuse["bytes"]["fetch"] < out["policies"]["always-fetch"]["bytes"]["fetch"]
    assert load["cache"]["hits"] + load["cache"]["misses"] > 0


def test_a_small_cache_evicts():
    out = run(policies=("reuse",), requesters=1, cache_blocks=8)
    assert out["policies"]["reuse"]["cache"]["evictions"] > 0


def test_deterministic_in_the_seed():
    def strip(o):
        return {k: {x: y for x, y in v.items() if x != "wall_s"} for k, v in o["policies"].items()}

    a, b = run(policies=("predicate", "reuse")), run(policies=("predicate", "reuse"))
    assert strip(a) == strip(b)
    other = run(policies=("predicate", "reuse"), workload=SimWorkload(**{**WORKLOAD.__dict__, "seed": 1}))
    assert strip(other) != strip(a)


def test_replicas_spread_a_hot_chunk():
    hot = SimWorkload(agents=16, requests_per_agent=2, decode_steps=(8,), chunks=4, zipf=3.0, chunk_blocks=8)
    one = run(workload=hot, policies=("always-route",), requesters=4, concurrency=2)["policies"]["always-route"]
    three = run(workload=hot, policies=("always-route",), requesters=4, concurrency=2, replicas=2)["policies"]["always-route"]
    assert sum(u > 0 for u in three["holder_utilisation"].values()) > sum(u > 0 for u in one["holder_utilisation"].values())


def test_paced_admission_waits_for_arrivals():
    slow = SimWorkload(**{**WORKLOAD.__dict__, "rate": 1.0})  # a request a second: the cluster idles between them
    paced = run(workload=slow, policies=("always-route",), paced=True)["policies"]["always-route"]
    eager = run(workload=slow, policies=("always-route",))["policies"]["always-route"]
    assert paced["makespan_s"] > 10 * eager["makespan_s"]
    assert paced["mean_s"] <= eager["mean_s"] * 1.0001


def test_a_128_instance_run_accounts_for_every_session_step():
    """A 16-node cluster end to end (its speed is `benchmarks/sim_scale`'s, not a timed assertion)."""
    wl = SimWorkload(agents=512, requests_per_agent=4, decode_steps=(8, 16), chunks=256, chunk_blocks=16)
    cfg = SimConfig(topology=Topology(nodes=16, gpus_per_node=8), requesters=64, workload=wl, concurrency=8,
                    policies=("predicate",))  # fmt: skip
    out = simulate(cfg)
    p = out["policies"]["predicate"]
    assert p["session_steps"] == out["session_steps"] == sum(r.steps for q in prepare(cfg).queues for r in q)
    assert out["instances"] == 128 and out["holders"] == 64
    assert p["throughput"] > 0 and p["holder_utilisation_max"] <= 1.0 + 1e-9


def test_lru_cache_keeps_pinned_hits_and_refuses_what_cannot_fit():
    from qroute.sim.cache import LruCache

    c = LruCache(4)
    c.insert([1, 2, 3], set())
    assert c.lookup([1, 9]) == [1] and (c.hits, c.misses) == (1, 1)
    c.insert([4, 5], {1})  # full: evicts the least recently used unpinned block (2)
    assert list(c.blocks) == [3, 1, 4, 5] and c.evictions == 1
    c.insert([6, 7, 8, 9], {1})  # 4 new, 3 slots once hit 1 is pinned: refused
    assert c.refused == 4 and 1 in c.blocks and 6 not in c.blocks


def test_from_timed_takes_the_generator_records():
    from types import SimpleNamespace

    from qroute.sim import Layout, from_timed

    task = SimpleNamespace(numel=lambda: 24)
    rec = SimpleNamespace(id=0, chunk=1, blocks=(4, 6), steps=3, task=task, step_tokens=2, sparse=True)
    (r,) = from_timed([SimpleNamespace(agent=5, arrival_s=0.25, request=rec)], Layout.uniform(2, 4, 16))
    assert (r.agent, r.arrival_s, r.chunk, tuple(r.blocks), r.steps, r.offset, r.step_tokens, r.sparse) == (
        5, 0.25, 1, (4, 6), 3, 24, 2, True)  # fmt: skip


def test_the_simulator_imports_neither_the_runtime_nor_torch():
    import subprocess
    import sys

    code = ("import sys, qroute.sim; bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or "
            "m.startswith(('qroute.runtime', 'qroute.kernels'))]; assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_row_dtype_prices_routed_rows_like_the_runtime_model():
    """An fp32 runtime model sends fp32 rows and states: twice the route bytes of bf16."""
    bf16 = run(policies=("always-route",))["policies"]["always-route"]["bytes"]["route"]
    fp32 = run(policies=("always-route",), row_dtype="fp32")["policies"]["always-route"]["bytes"]["route"]
    assert fp32 == pytest.approx(2 * bf16, rel=0.01)
