"""The requester's compute calls, one function each, shared by the executor (`batch.BatchContext`, `Executor`)
and the quick calibration (`calibration.compute`), so that what calibration times is what serving runs: on a
GPU the Triton kernels of `qroute.kernels`, on the CPU the plain-torch paths. None of them syncs the device."""

from __future__ import annotations

import torch
from torch import Tensor

from qroute.attention import AttentionState, attend, merge_states, splice
from qroute.attention.rope import RopeSpec


def merge_parts(parts: list[AttentionState]) -> AttentionState:
    """Exact merge of one session's partial states, each `o [R, latent]`, `lse [R]` (flat rows) -> one state of R
    rows; on a GPU, the merge kernel over them stacked."""
    if len(parts) == 1 or not parts[0].o.is_cuda:
        return merge_states(parts, check=False)
    from qroute.kernels import merge_partials  # imports triton: only where a GPU runs it

    dtype = parts[0].o.dtype
    o = torch.stack([p.o.to(dtype) for p in parts])  # [P, R, latent]
    return merge_partials(o, torch.stack([p.lse.float() for p in parts]))


def attend_moved(q: Tensor, keys: Tensor, scale: float, latent: int, block_size: int) -> AttentionState:
    """q `[k, H, D]` over moved KV rows `keys [M, D]` (values = the first `latent` columns) -> flat rows `[k * H]`;
    on a GPU, the sparse MLA kernel over the rows as pages of `block_size` rows, every page selected (M is whole
    blocks there)."""
    if not q.is_cuda:
        return attend(q.reshape(-1, q.shape[-1]), keys, keys[:, :latent], scale, check=False)
    from qroute.kernels import sparse_mla  # imports triton: only where a GPU runs it

    pages = keys.view(-1, block_size, keys.shape[-1])  # [M / bs, bs, D]
    table = torch.arange(pages.shape[0], device=q.device).expand(q.shape[0], -1)
    state = sparse_mla(q.contiguous(), pages, table, scale, latent, check=False)
    return AttentionState(state.o.reshape(-1, state.o.shape[-1]), state.lse.reshape(-1))


def splice_moved_(kv: Tensor, offset: int, rope: RopeSpec, latent: int) -> None:
    """Rotate the rope part (columns `latent:`) of moved KV `kv [L, T, D]` by `+offset`, in place; on a GPU in one
    kernel launch over all layers."""
    if kv.is_cuda:
        from qroute.kernels import splice_rope_  # imports triton: only where a GPU runs it

        splice_rope_(kv, offset, rope)
    else:
        kv[..., latent:] = splice(kv[..., latent:], offset, rope)
