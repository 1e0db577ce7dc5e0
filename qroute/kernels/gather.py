"""Fetch's scattered gather: selected blocks of a paged store, all layers, into one contiguous send buffer; and back.

The store layout is `BlockStore.kv [L, num_blocks, block_size, D]` (`qroute.runtime.store`):
each (layer, block) page of `block_size * D` elements is contiguous. One launch copies every
(layer, selected block) page; programs own BLOCK elements of one page. Elements are moved
as same-width integers, so any dtype (bf16, fp32, fp8) is copied bit for bit.
"""

from typing import Sequence

import torch
from torch import Tensor

from qroute.errors import QrouteError
from qroute.kernels.checks import expect_ndim, expect_out
from qroute.kernels.dispatch import LazyKernel, tl, triton, use_triton

WHAT, SCATTER = "gather_store", "scatter_store"
BLOCK = 4096
_AS_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

if triton is not None:

    def _copy_pages_kernel(
        kv_ptr, buf_ptr, slots_ptr,  # kv [L, N, bs, D] pages; buf [L, n * bs, D]; slots [n]
        page_elems, chunks, stride_kl, stride_kn, stride_bl,
        TO_BUFFER: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        pid, layer = tl.program_id(0), tl.program_id(1).to(tl.int64)
        i, chunk = pid // chunks, pid % chunks  # selected block, part of its page
        slot = tl.load(slots_ptr + i).to(tl.int64)
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < page_elems
        in_store = kv_ptr + layer * stride_kl + slot * stride_kn + offs
        in_buf = buf_ptr + layer * stride_bl + i.to(tl.int64) * page_elems + offs
        if TO_BUFFER:
            tl.store(in_buf, tl.load(in_store, mask=mask), mask=mask)
        else:
            tl.store(in_store, tl.load(in_buf, mask=mask), mask=mask)

    _COPY = LazyKernel(_copy_pages_kernel)


def gather_store(
    kv: Tensor, slots: Sequence[int] | Tensor, *, out: Tensor | None = None, check: bool = True, backend: str = "auto"
) -> Tensor:
    """All layers of the selected blocks as one contiguous send buffer.

    kv     [L, num_blocks, block_size, D]  any dtype; each [block_size, D] page contiguous
    slots  [n] local block slots (int), in send order; distinct, 0 <= slot < num_blocks
    out    optional contiguous [L, n * block_size, D] buffer of kv's dtype
    check  validate slots (range, duplicates) on the host (a device sync if slots live on GPU)
    Returns `buf [L, n * block_size, D]`, block `j` of the selection at rows `[j*bs, (j+1)*bs)`.
    """
    ids = _slots(WHAT, kv, slots, check)
    L, _, bs, D = kv.shape
    shape = (L, ids.numel() * bs, D)
    if out is not None:
        expect_out(WHAT, "out", out, shape, kv.dtype, kv.device)
    if not use_triton(backend, kv.device, WHAT):
        ref = gather_store_reference(kv, ids)
        return ref if out is None else out.copy_(ref)
    buf = out if out is not None else kv.new_empty(shape)
    _launch(kv, buf, ids, to_buffer=True)
    return buf


def scatter_store(
    kv: Tensor, slots: Sequence[int] | Tensor, buf: Tensor, *, check: bool = True, backend: str = "auto"
) -> Tensor:
    """The receive side: write `buf [L, n * block_size, D]` into the given slots of `kv` in place; returns `kv`.

    Same contract as `gather_store`; `scatter_store(kv2, s, gather_store(kv1, s))` copies the blocks.
    """
    ids = _slots(SCATTER, kv, slots, check)
    L, _, bs, D = kv.shape
    expect_out(SCATTER, "buf", buf, (L, ids.numel() * bs, D), kv.dtype, kv.device)
    if not use_triton(backend, kv.device, SCATTER):
        scatter_store_reference(kv, ids, buf)
        return kv
    _launch(kv, buf, ids, to_buffer=False)
    return kv


def _launch(kv: Tensor, buf: Tensor, ids: Tensor, to_buffer: bool) -> None:
    L, _, bs, D = kv.shape
    page = bs * D
    if ids.numel() == 0 or L == 0 or page == 0:
        return
    if L > 65535:
        raise QrouteError(f"{WHAT}: L={L} layers: expected <= 65535 (grid axis 1)")
    kv_i, buf_i = kv.view(_AS_INT[kv.element_size()]), buf.view(_AS_INT[kv.element_size()])
    chunks = triton.cdiv(page, BLOCK)
    grid = (ids.numel() * chunks, L)
    _COPY.get()[grid](
        kv_i, buf_i, ids, page, chunks, kv.stride(0), kv.stride(1), buf.stride(0),
        TO_BUFFER=to_buffer, BLOCK=BLOCK, num_warps=4,
    )  # fmt: skip


def gather_store_reference(kv: Tensor, slots: Sequence[int] | Tensor) -> Tensor:
    """Torch oracle: `index_select` over the block dim, as `BlockStore.gather` does."""
    ids = torch.as_tensor(slots, dtype=torch.long, device=kv.device).flatten()
    return kv.index_select(1, ids).reshape(kv.shape[0], -1, kv.shape[-1])


def scatter_store_reference(kv: Tensor, slots: Sequence[int] | Tensor, buf: Tensor) -> None:
    """Torch oracle of the receive side: `kv[:, slots] = buf` as pages, in place."""
    ids = torch.as_tensor(slots, dtype=torch.long, device=kv.device).flatten()
    kv[:, ids] = buf.reshape(kv.shape[0], ids.numel(), kv.shape[2], kv.shape[3])


def _slots(what: str, kv: Tensor, slots: Sequence[int] | Tensor, check: bool) -> Tensor:
    """Slots as an int64 tensor on kv's device, checked: in range and distinct."""
    expect_ndim(what, "kv", kv, 4, "[L, num_blocks, block_size, D]")
    if (kv.shape[3] > 1 and kv.stride(3) != 1) or (kv.shape[2] > 1 and kv.stride(2) != kv.shape[3]):
        raise QrouteError(f"{what}: kv strides {kv.stride()}: expected each [block_size, D] page contiguous")
    if isinstance(slots, Tensor):
        if slots.dim() != 1 or slots.dtype.is_floating_point or slots.dtype == torch.bool:
            raise QrouteError(f"{what}: slots {slots.dtype} shape {tuple(slots.shape)}: expected a 1-D integer tensor")
        if slots.device.type != "cpu" and slots.device != kv.device:
            raise QrouteError(f"{what}: slots on {slots.device}: expected the host or {kv.device} like kv")
    ids = torch.as_tensor(slots, dtype=torch.long).flatten()
    if check:
        check_slots(ids, kv.shape[1], what)
    return ids.to(kv.device)


def check_slots(ids: Tensor, num_blocks: int, what: str = WHAT) -> None:
    """Every slot in `[0, num_blocks)` and none repeated (a repeat would race on scatter)."""
    if ids.numel() == 0:
        return
    host = ids.cpu()
    bad = (host < 0) | (host >= num_blocks)
    if bool(bad.any()):
        raise QrouteError(f"{what}: block slot {int(host[bad][0])} out of range: expected 0 <= slot < {num_blocks}")
    uniq, counts = torch.unique(host, return_counts=True)
    if bool((counts > 1).any()):
        raise QrouteError(f"{what}: duplicate block slot {int(uniq[counts > 1][0])}: expected each slot at most once")
