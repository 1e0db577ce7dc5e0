"""Triton kernels for sparse MLA, one file each, behind thin checked wrappers with torch references.

Dispatch (every wrapper's `backend="auto"`): the Triton kernel when the tensors are on CUDA,
or on CPU under `TRITON_INTERPRET=1`; otherwise the plain-torch reference, which is also the
tests' oracle. Importing this package never needs Triton.

    sparse_mla      partial attention of absorbed MLA rows over per-query selected blocks (split-K; on Hopper
                    a Gluon kernel, sparse_mla_hopper, from 8 queries up)
    merge_partials  exact merge of P stacked attention states
    splice_rope_    re-rotate the rope part of every layer of a chunk by +offset, in place
    gather_store    selected blocks of a paged store, all layers, into one send buffer (scatter_store: back)
"""

from qroute.kernels.dispatch import has_triton, interpreting, triton_runs_on, use_triton
from qroute.kernels.gather import gather_store, gather_store_reference, scatter_store, scatter_store_reference
from qroute.kernels.merge import merge_partials, merge_partials_reference
from qroute.kernels.sparse_mla import check_block_table, sparse_mla, sparse_mla_reference
from qroute.kernels.splice import splice_rope, splice_rope_, splice_rope_reference

__all__ = [
    "check_block_table",
    "gather_store",
    "gather_store_reference",
    "has_triton",
    "interpreting",
    "merge_partials",
    "merge_partials_reference",
    "scatter_store",
    "scatter_store_reference",
    "sparse_mla",
    "sparse_mla_reference",
    "splice_rope",
    "splice_rope_",
    "splice_rope_reference",
    "triton_runs_on",
    "use_triton",
]
