"""The host-memory tier: route, fetch and local through the in-process host holder equal the single-instance oracle.

On the CPU (CI) the requester runs on the CPU and the copies are plain memory copies; the
`gpu` tests run the requester on a CUDA device with the Triton kernels (splice, moved-KV
attention, merge) and the blocks in pinned host memory.
"""

import pytest
import torch

from qroute.calibration.shapes import serve, serve_together, shaped_request
from qroute.cost import CostModel, load_profile
from qroute.errors import QrouteError
from qroute.runtime.executor import Executor
from qroute.runtime.holder import PING, ROUTE, STOP
from qroute.runtime.hosttier import HOST_HOLDER, build_host_tier, resolve_device
from qroute.runtime.reference import reference_logits, relative_error
from qroute.runtime.world import WorldSpec
from qroute.workload.corpus import CorpusSpec

SPEC = WorldSpec(layers=2, hidden=64, heads=4, corpus=CorpusSpec(max_tokens=2048, block_size=8, chunk_blocks=8))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def cpu_tier():
    return build_host_tier(SPEC, "cpu")


def executor(tier, profile="published-h100"):
    w = tier.world
    return Executor(0, w.model, w.corpus, w.directory, CostModel(w.geometry, load_profile(profile)), links=tier.links)


def check_exact(tier, ex, primitive, step_tokens, blocks, stride, seed, tol):
    w = tier.world
    r = shaped_request(w, 1, step_tokens, blocks, 2, seed=seed, stride=stride)
    s = serve(ex, r, primitive)
    want = reference_logits(w.model, w.corpus, r, s.inputs)
    assert relative_error(torch.cat(s.logits).cpu(), want.cpu()) <= tol
    return s


@pytest.mark.parametrize("primitive", ["route", "fetch", "local", "predicate"])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_primitive_through_the_host_holder_is_exact(cpu_tier, primitive, stride):
    ex = executor(cpu_tier)
    seed = int(torch.randint(0, 10_000, ()))  # fresh selections each run
    s = check_exact(cpu_tier, ex, primitive, step_tokens=3, blocks=3, stride=stride, seed=seed, tol=1e-4)
    assert set(s.primitives) == {HOST_HOLDER}
    if primitive != "predicate":
        assert set(s.primitives.values()) == {primitive}
    kinds = {t["kind"] for t in ex.trace}
    if primitive == "route":
        assert s.measured.messages == 2 * 2 * 2  # 2 steps x 2 layers, out and back
        routes = [t for t in ex.trace if t["kind"] == "route"]
        assert all(t["rtt_s"] >= t["holder_compute_s"] > 0 and t["path"] in ex.cost.profile.paths for t in routes)
    if primitive == "fetch":
        assert "fetch" in kinds and "splice" in kinds
        (fetch,) = [t for t in ex.trace if t["kind"] == "fetch"]
        assert fetch["bytes"] == 2 * 3 * 8 * 576 * 4  # layers x tokens x fp32 latent rows


def test_a_batch_of_sessions_shares_the_route_message_and_stays_exact(cpu_tier):
    w, ex = cpu_tier.world, executor(cpu_tier)
    requests = [shaped_request(w, 1, k, 2, 2, seed=70 + k) for k in (1, 4)]
    sessions = serve_together(ex, requests, "route")
    for s, r in zip(sessions, requests):
        assert relative_error(torch.cat(s.logits), reference_logits(w.model, w.corpus, r, s.inputs)) <= 1e-4
    routes = [t for t in ex.trace if t["kind"] == "route"]
    assert len(routes) == 2 * 2 and all(len(t["groups"]) == 2 for t in routes)  # one message per layer and step


def test_the_store_is_not_touched_by_a_fetch(cpu_tier):
    before = cpu_tier.link.store.kv.clone()
    check_exact(cpu_tier, executor(cpu_tier), "fetch", 1, 4, 1, seed=5, tol=1e-4)  # splices its copy in place
    assert torch.equal(cpu_tier.link.store.kv, before)


def test_host_link_protocol_errors(cpu_tier):
    link = cpu_tier.link
    with pytest.raises(QrouteError, match="recv with no message posted"):
        link.recv()
    with pytest.raises(QrouteError, match=f"message kind {PING}: expected ROUTE \\({ROUTE}\\)"):
        link.isend(PING, [], [])
    assert link.isend(STOP, [], []) == []


@pytest.mark.parametrize("bad", ["tpu", "cuda:7" if torch.cuda.device_count() < 8 else "cuda:99", "gpu0"])
def test_bad_device_is_one_clear_error(bad):
    if bad.startswith("cuda") and not torch.cuda.is_available():
        bad = "cuda"
    with pytest.raises(QrouteError, match=f"device '{bad}'"):
        resolve_device(bad)


def test_auto_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("primitive", ["route", "fetch", "local"])
@pytest.mark.parametrize("stride", [1, 2])
def test_gpu_requester_with_pinned_host_blocks_is_exact(primitive, stride):
    tier = build_host_tier(SPEC, "cuda")
    assert tier.link.store.kv.is_pinned() and tier.path == "pcie"
    ex = executor(tier)
    s = check_exact(tier, ex, primitive, step_tokens=4, blocks=3, stride=stride, seed=stride, tol=1e-4)
    assert s.own_kv.is_cuda and (s.moved is None or s.moved.is_cuda)
