"""qroute: cross-instance attention for LLM inference clusters.

Decide per request whether to route the query rows to the holder of the KV blocks, fetch
the blocks, or recompute them locally, from a calibrated topology-aware cost model; then
do it exactly. See docs/architecture.md.
"""

__version__ = "0.1.0"
