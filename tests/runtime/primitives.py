"""Shared by the path tests: holders serve, rank 0 serves one request per primitive and checks it against the
single-instance reference (a helper module, not a test module)."""

import torch
import torch.distributed as dist

from qroute.calibration.shapes import serve, shaped_request
from qroute.cost import CostModel, load_profile
from qroute.cost.model import PRIMITIVES
from qroute.runtime import holder, paths
from qroute.runtime.control import stop_holders
from qroute.runtime.executor import Executor
from qroute.runtime.reference import reference_logits, relative_error
from qroute.runtime.store import Placement
from qroute.runtime.world import WorldSpec, build_world
from qroute.workload.corpus import CorpusSpec

SMALL = WorldSpec(layers=2, hidden=64, heads=4, corpus=CorpusSpec(max_tokens=2048, block_size=8, chunk_blocks=8),
                  placement=Placement("hashed"))  # a chunk's blocks on every holder


def primitives_over(instance, path: str | None = None):
    """On rank 0: ({primitive: relative error of the logits}, {path name of every exchange}, {type of the group that
    carried it}), each request forced onto `path` (None: the plan's path). Holders serve; they return None."""
    world = build_world(SMALL, instance.holders)
    if not instance.is_requester:
        store = holder.build_store(instance.rank, world.corpus, world.directory, world.model)
        dist.barrier()
        holder.serve(store, holder.AttentionSpec.of(world.model), instance.requester_ranks)
        return None
    dist.barrier()
    try:
        executor = Executor(0, world.model, world.corpus, world.directory, CostModel(world.geometry, load_profile("published-h100")))
        executor.force_path = path
        errors = {}
        for primitive in PRIMITIVES:
            request = shaped_request(world, len(instance.holders), 2, 6, 3, seed=7)
            session = serve(executor, request, primitive)
            want = reference_logits(world.model, world.corpus, request, session.inputs)
            errors[primitive] = relative_error(torch.cat(session.logits).cpu(), want.cpu())
        used = {r.get("path") for r in executor.trace if r.get("kind") in ("route", "fetch")}
        return errors, used, {type(paths.group(name)).__name__ for name in used}
    finally:
        stop_holders(0, instance.holders)
