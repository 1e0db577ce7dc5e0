import pytest

from qroute.demo import DemoConfig
from qroute.runtime.launcher import ClusterSpec
from qroute.runtime.store import Placement
from qroute.runtime.world import WorldSpec
from qroute.workload.agents import WorkloadSpec
from qroute.workload.corpus import CorpusSpec


@pytest.fixture
def tiny():
    """A DemoConfig factory for a small, fast cluster (2 layers, 4 heads of the real 576/512 MLA geometry)."""

    def make(instances=3, requesters=1, placement="contiguous", replicas=0, sparse=False, modes=("route", "fetch", "local", "predicate"),
             profile="published-h100", requests=4, batch=2, dtype="float32", steps=2, seed=0, step_tokens=1, frames="auto", backend="gloo",
             online=False):
        corpus = CorpusSpec(max_tokens=2048, block_size=8, chunk_blocks=8)
        return DemoConfig(
            cluster=ClusterSpec(instances, requesters, timeout_s=60.0, frames=frames, backend=backend),
            world=WorldSpec(layers=2, hidden=64, heads=4, dtype=dtype, seed=seed, corpus=corpus,
                            placement=Placement(placement, replicas)),
            workload=WorkloadSpec(requests=requests, task_tokens=12, steps=steps, topk_blocks=3, sparse=sparse, seed=seed,
                                  step_tokens=step_tokens),
            batch=batch, profile=profile, modes=modes, progress=False, online=online,
        )  # fmt: skip

    return make
