"""Cluster simulator: the planner's decisions served on a virtual clock, at cluster scale.

What is modelled. A cluster of `nodes x gpus_per_node` instances (`topology.Topology`); two
instances talk over the profile's intra-node path on one node and its inter-node path across
nodes. Some instances are requesters, the rest hold the corpus's blocks (contiguous or hashed
placement, with replicas; a requester reads a copy on its own node when there is one). Each
requester serves its agents' requests as `qroute bench-agents` does: in arrival order, up to
`concurrency` sessions decoding together (continuous batching; an open stalls the batch), and the
same measurements (throughput of the slowest requester, the latency of every session-step, bytes per
primitive, choices, cache hits, holder utilisation). Decisions go through `qroute.policies.decide`
(hence the planner) with a per-requester policy state and LRU block cache; every service time comes
from `qroute.cost.model.CostModel`. One event is one decode step of one requester's batch: its L
per-layer round trips are a train whose period is the planner's per-layer time, stretched when the
holders' compute (capacity `holder_capacity`) or their ports saturate (FIFO servers in the fluid
limit, `engine`); fetches are FIFO block transfers on the holder's and requester's ports, and routes
behind one wait for it. Latencies stream into a log-binned histogram, so memory stays bounded.

What is not. Packet-level interleaving (a transfer holds its ports whole), per-layer FIFO order
within a saturated holder (the fluid round replaces it; a newcomer sees the trains already running,
they see it from their next step), copy-engine or NIC limits beyond one port per (instance, path),
the holders' gather time on their own compute (priced on the requester, as the cost model does),
the own context's attention and MLP (a constant `base_step_s` per batch step), failures. The
simulator never imports the runtime or the kernels: it needs no torch.
"""

from qroute.sim.run import Prepared, SimConfig, prepare, simulate
from qroute.sim.topology import Layout, Topology, place
from qroute.sim.workload import SimRequest, SimWorkload, from_timed, layout_of, synthetic

__all__ = ["Layout", "Prepared", "SimConfig", "SimRequest", "SimWorkload", "Topology", "from_timed", "layout_of",
           "place", "prepare", "simulate", "synthetic"]
