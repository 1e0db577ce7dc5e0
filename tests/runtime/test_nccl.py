"""The runtime under `backend="nccl"`: every instance on its own GPU, messages exact-framed in GPU buffers.

NCCL refuses two ranks on one GPU, so with one GPU only a world of one runs (the launcher's device set-up, the
model, store and executor on the GPU); route, fetch and local GPU to GPU need 2 GPUs (issue 8's machine).
"""

from dataclasses import replace

import pytest
import torch

from qroute.demo import run_demo

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]
gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(gpus < 1, reason="no CUDA device")
def test_a_world_of_one_on_its_gpu_is_exact(tiny):
    results = run_demo(tiny(instances=1, backend="nccl", modes=("predicate", "route")))
    for run in results["runs"]:
        assert run["exact"], (run["mode"], run["max_rel_err"])


@pytest.mark.skipif(gpus < 2, reason="needs 2 CUDA devices (one per instance)")
@pytest.mark.parametrize("placement", ["contiguous", "hashed"])
def test_route_fetch_and_local_gpu_to_gpu_are_exact(tiny, placement):
    results = run_demo(tiny(instances=min(gpus, 3), backend="nccl", placement=placement,
                            modes=("route", "fetch", "local", "predicate")))  # fmt: skip
    for run in results["runs"]:
        assert run["exact"], (run["mode"], run["max_rel_err"])
    assert sum(h["route_messages"] for h in results["holders"]) > 0
    assert sum(h["fetched_blocks"] for h in results["holders"]) > 0


@pytest.mark.skipif(gpus < 3, reason="needs 3 CUDA devices (2 requesters, 1 holder)")
def test_a_holder_polls_several_requesters_over_nccl(tiny):
    results = run_demo(tiny(instances=3, requesters=2, backend="nccl", modes=("route", "fetch")))
    (holder,) = results["holders"]
    assert holder["requesters_served"] == [0, 1]
    assert all(run["exact"] for run in results["runs"])


@pytest.mark.skipif(gpus < 2, reason="needs 2 CUDA devices (one per instance)")
@pytest.mark.parametrize("symm", [False, True])
def test_the_demo_calibrates_itself_gpu_to_gpu(tiny, symm):
    """`--profile auto` (the demo's default): the quick calibration's exchanges and microbenchmarks on the GPUs,
    with two requesters calibrating against the holders at once where there are 3 GPUs."""
    config = tiny(instances=min(gpus, 3), requesters=2 if gpus >= 3 else 1, backend="nccl", profile="auto",
                  modes=("predicate", "route"))  # fmt: skip
    config = replace(config, cluster=replace(config.cluster, symm=symm))
    results = run_demo(config)
    assert all(run["exact"] for run in results["runs"])
    path = results["profile"]["default_paths"][0]
    assert ("symm" in path) == symm, path


@pytest.mark.skipif(gpus < 4, reason="needs 4 CUDA devices (2 requesters, 2 holders)")
def test_two_requesters_calibrating_against_two_holders_do_not_deadlock(tiny):
    """Requester 0 calibrates against holder 2 and requester 1 against holder 3 while each holder polls both
    requesters: without the launcher's pair connections, NCCL's connect-at-first-message deadlocked here."""
    results = run_demo(tiny(instances=4, requesters=2, backend="nccl", profile="auto", modes=("predicate",)))
    assert all(run["exact"] for run in results["runs"])
    assert sorted(h["rank"] for h in results["holders"]) == [2, 3]
