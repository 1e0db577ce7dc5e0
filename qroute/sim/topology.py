"""The simulated cluster's shape: nodes x GPUs, which profile path joins two instances, holder capacity,
and where the corpus's blocks live (placement over holders, with replicas).

Instance `i` sits on node `i // gpus_per_node`. Two instances on one node talk over the `intra` path,
on two nodes over the `inter` path (path names from the profile). Requesters are taken round-robin
over nodes (local GPU 0 of every node, then local GPU 1, ...), so a cluster with requesters on every
node reaches some holders over `intra` and the rest over `inter`; the other instances are holders.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from qroute.cost.profile import Profile
from qroute.errors import QrouteError, positive_int, require

PLACEMENTS = ("contiguous", "hashed")


@dataclass(frozen=True)
class Topology:
    """`nodes` x `gpus_per_node` instances; `intra` / `inter`: the profile paths within / across nodes
    (None where the topology needs none); `holder_capacity`: exchanges a holder serves at once."""

    nodes: int = 1
    gpus_per_node: int = 8
    intra: str | None = "nvlink4"
    inter: str | None = "ibgda"
    holder_capacity: int = 1

    def __post_init__(self) -> None:
        positive_int("nodes", self.nodes)
        positive_int("gpus per node", self.gpus_per_node)
        cap = self.holder_capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise QrouteError(f"holder capacity={cap!r}: expected an integer >= 1 (exchanges served at once)")
        for name in ("intra", "inter"):
            value = getattr(self, name)
            ok = value is None or (isinstance(value, str) and value != "")
            require(ok, f"{name} path={value!r}: expected a path name or None")
        if self.gpus_per_node > 1 and self.intra is None:
            raise QrouteError("no path between instances 0 and 1 (both on node 0): expected an intra-node path name")
        if self.nodes > 1 and self.inter is None:
            raise QrouteError(f"no path between instances 0 and {self.gpus_per_node} (nodes 0 and 1): "
                              "expected an inter-node path name")  # fmt: skip

    @property
    def instances(self) -> int:
        return self.nodes * self.gpus_per_node

    def node(self, instance: int) -> int:
        return instance // self.gpus_per_node

    def path_names(self) -> tuple[str, ...]:
        """The paths this topology uses, intra first: index `path_index` into this."""
        used = [self.intra if self.gpus_per_node > 1 else None, self.inter if self.nodes > 1 else None]
        return tuple(dict.fromkeys(p for p in used if p is not None)) or (self.intra or self.inter,)

    def path(self, a: int, b: int) -> str:
        """The path between instances `a` and `b`."""
        return self.intra if self.node(a) == self.node(b) else self.inter

    def path_index(self, a: int, b: int) -> int:
        return self.path_names().index(self.path(a, b))

    def check(self, profile: Profile) -> None:
        """Every path this topology uses exists in `profile`, with a finite probe >= 0 and a rate > 0."""
        for role, name in (("intra", self.intra), ("inter", self.inter)):
            if name is None or name not in self.path_names():
                continue
            if name not in profile.paths:
                raise QrouteError(f"unknown {role}-node path {name!r}: expected one of {', '.join(profile.paths)} "
                                  f"(profile {profile.name!r})")  # fmt: skip
            spec = profile.paths[name]
            require(spec.beta_Bps > 0, f"path {name!r}: beta_Bps={spec.beta_Bps!r}: expected a rate > 0 B/s")
            require(spec.alpha_s >= 0, f"path {name!r}: alpha_s={spec.alpha_s!r}: expected a probe latency >= 0 s")

    def roles(self, requesters: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(requester instances, holder instances): requesters round-robin over nodes, the rest hold blocks."""
        positive_int("requesters", requesters)
        if requesters >= self.instances:
            raise QrouteError(f"requesters={requesters} on {self.instances} instances: expected at most "
                              f"{self.instances - 1}, so that one instance holds blocks")  # fmt: skip
        order = [n * self.gpus_per_node + g for g in range(self.gpus_per_node) for n in range(self.nodes)]
        chosen = set(order[:requesters])
        return tuple(sorted(chosen)), tuple(i for i in range(self.instances) if i not in chosen)


@dataclass(frozen=True)
class Layout:
    """The corpus as the simulator sees it: chunk `c` is blocks `[first[c], first[c] + blocks[c])`."""

    first: tuple[int, ...]
    blocks: tuple[int, ...]
    block_size: int

    def __post_init__(self) -> None:
        positive_int("block size", self.block_size)
        require(len(self.first) == len(self.blocks) and len(self.first) > 0, "layout: expected one or more chunks")

    @classmethod
    def uniform(cls, chunks: int, chunk_blocks: int, block_size: int) -> "Layout":
        positive_int("chunks", chunks)
        positive_int("chunk blocks", chunk_blocks)
        return cls(tuple(range(0, chunks * chunk_blocks, chunk_blocks)), (chunk_blocks,) * chunks, block_size)

    @property
    def num_blocks(self) -> int:
        return self.first[-1] + self.blocks[-1]


def place(layout: Layout, holders: Sequence[int], kind: str = "contiguous", replicas: int = 0) -> list[tuple[int, ...]]:
    """Holders of every block, primary first (as `runtime.store.place`): whole chunks balanced over holders
    (`contiguous`) or each block by a stable hash of its id (`hashed`); `replicas` extra copies on the next holders."""
    require(kind in PLACEMENTS, f"placement {kind!r}: expected one of {', '.join(PLACEMENTS)}")
    n = len(holders)
    require(n > 0, "no holders: expected at least one holder instance")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas < n:
        raise QrouteError(f"replicas={replicas!r}: expected an integer >= 0 and < holders={n}")
    primary = _contiguous(layout, n) if kind == "contiguous" else [_stable_hash(b) % n for b in range(layout.num_blocks)]
    copies = {p: tuple(holders[(p + r) % n] for r in range(replicas + 1)) for p in set(primary)}
    return [copies[p] for p in primary]


def _contiguous(layout: Layout, n: int) -> list[int]:
    out, share, holder = [], layout.num_blocks / n, 0
    for count in layout.blocks:
        if len(out) >= share * (holder + 1) and holder < n - 1:
            holder += 1
        out += [holder] * count
    return out


def _stable_hash(block: int) -> int:
    return int.from_bytes(hashlib.blake2b(block.to_bytes(8, "little"), digest_size=8).digest(), "little")
