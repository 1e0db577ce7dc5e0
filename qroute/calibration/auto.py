"""`--profile auto` of a live cluster (`qroute demo`, `qroute bench-agents`): a quick calibration of the cluster itself.

Where the world's chunks allow it, this is `qroute calibrate --quick` run inside the cluster (`calibrate.measure`):
the OSU sweeps, then the in-situ training grid served through the runtime's own executor and holders, fitted to its
trace. Its chunk sizes are the quick grid's (`QUICK_CHUNK_BLOCKS`, set for chunks of 32 blocks) scaled to the
world's largest chunk. Where the grid's requests cannot be made (a chunk's first blocks spread over holders by
hashed placement, or a world of one instance) it falls back to `compute.quick_profile`: each constant timed in a
loop of its own. Measured on the dev VM (2 cores, `qroute demo`, 2026-11-26, seven runs against three): the in-situ
profile priced always-route -10% to +11% (median -1%), the loop's -22% to -28%.
"""

from __future__ import annotations

import socket

from qroute.calibration.calibrate import CalibrationConfig, measure
from qroute.calibration.grid import QUICK_CHUNK_BLOCKS
from qroute.calibration.compute import dtype_name, quick_profile
from qroute.calibration.shapes import PROBE, shaped_request
from qroute.cost import load_profile
from qroute.cost.profile import Profile
from qroute.cost.profile import from_dict as profile_from_dict
from qroute.errors import QrouteError
from qroute.runtime import paths
from qroute.runtime.launcher import ClusterSpec, Instance
from qroute.runtime.world import WorldSpec

GRID_CHUNK = 32  # the chunk size the quick grid is set for (`qroute calibrate`'s world)


def cluster_profile(name: str, instance: Instance, cluster: ClusterSpec, world_spec: WorldSpec, world,
                    progress: bool = True) -> Profile:  # fmt: skip
    """The profile a live cluster plans with: `name` ("auto": `auto_profile`; else a built-in or a profile JSON), of the
    paths the cluster opened (`paths.opened`)."""
    if name != "auto":
        return paths.opened(load_profile(name))
    return auto_profile(instance, cluster, world_spec, world, progress)


def auto_profile(instance: Instance, cluster: ClusterSpec, world_spec: WorldSpec, world, progress: bool = True) -> Profile:
    """A profile of this cluster measured now by requester `instance` (every requester measures its own), of the
    paths the cluster opened. Its description says which calibration made it."""
    dtype = dtype_name(world.model)
    if instance.world_size == 1:
        return quick_profile(world.model, world.geometry, None, [], world.corpus.block_size, dtype)
    blocks = quick_chunk_blocks(world)
    if blocks is None:
        holder = instance.holders[instance.rank % len(instance.holders)]
        others = [h for h in instance.holders if h != holder]
        other = (others[0], world.directory.blocks_on(others[0])) if others else None  # asking two holders at once
        return quick_profile(world.model, world.geometry, holder, world.directory.blocks_on(holder),
                             world.corpus.block_size, dtype, other)  # fmt: skip
    config = CalibrationConfig(cluster=cluster, world=world_spec, quick=True, progress=progress,
                               name=f"auto-{socket.gethostname()}", chunk_blocks=blocks)  # fmt: skip
    return paths.opened(profile_from_dict(measure(instance, config, world)["profile"], "the in-situ quick calibration"))


def quick_chunk_blocks(world) -> tuple[int, ...] | None:
    """The quick grid's chunk sizes scaled to the world's largest chunk (as they are for chunks of `GRID_CHUNK`
    blocks or more), or None where a request the in-situ grid serves cannot be made: a chunk of each size on each of
    the first two holders, its scattered half, and the speed probe."""
    bs = world.corpus.block_size
    largest = max(c.n_blocks(bs) for c in world.corpus.chunks)
    scale = min(1.0, largest / GRID_CHUNK)
    blocks = tuple(sorted({max(1, round(n * scale)) for n in QUICK_CHUNK_BLOCKS}))
    holders = sorted(set(world.directory.holders))[:2]
    try:
        shaped_request(world, 1, PROBE[0], PROBE[1], 1, seed=0)
        for n in blocks:
            shaped_request(world, 1, 1, max(2, n // 2), 1, seed=0, stride=2)
            for h in holders:
                shaped_request(world, 1, 1, n, 1, seed=0, on=h)
    except QrouteError:
        return None
    return blocks
