"""Merge of P partial attention states of the same rows in one launch (exact, like `merge_states`).

    o_full = sum_p exp(lse_p - lse_full) * o_p,   lse_full = logsumexp_p(lse_p)

Empty partials (`lse = -inf`, `o = 0`) are neutral; rows empty in every partial give
`(0, -inf)`. A program owns a few rows and one Dv tile: it reads the P log-sum-exps, then
the P value tiles, unrolled (P is a compile-time constant: one compile per P), so the
kernel is a pure stream of `P * Dv` values per row.
"""

import torch
from torch import Tensor

from qroute.attention import AttentionState, merge_states
from qroute.errors import QrouteError
from qroute.kernels.checks import FLOATS, dense_last, expect_dtype, expect_out, expect_shape
from qroute.kernels.dispatch import LazyKernel, same_device, tl, triton, use_triton

WHAT = "merge_partials"

if triton is not None:

    def _merge_kernel(
        o_ptr, lse_ptr, out_o_ptr, out_lse_ptr,  # o [P, R, Dv], lse [P, R] -> [R, Dv], [R]
        R, Dv,
        stride_op, stride_or, stride_lp, stride_lr, stride_out_r,
        P: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] rows
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        p = tl.arange(0, BLOCK_P)  # [BLOCK_P]
        lse = tl.load(lse_ptr + p[:, None] * stride_lp + r[None, :] * stride_lr,
                      mask=(p[:, None] < P) & (r[None, :] < R), other=float("-inf"))  # [BLOCK_P, BLOCK_R]  # fmt: skip
        top = tl.max(lse, axis=0)
        top = tl.where(top == float("-inf"), 0.0, top)  # row empty everywhere: all weights exp(-inf) = 0
        total = tl.sum(tl.exp(lse - top[None, :]), axis=0)  # [BLOCK_R]
        safe = tl.where(total == 0.0, 1.0, total)
        mask = (r[:, None] < R) & (d[None, :] < Dv)
        acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
        o_i = o_ptr + r[:, None] * stride_or + d[None, :]
        lse_i = lse_ptr + r * stride_lr
        for _ in tl.static_range(P):  # unrolled: all P tiles in flight at once
            w = tl.exp(tl.load(lse_i, mask=r < R, other=float("-inf")) - top) / safe  # [BLOCK_R], 0 if empty
            acc += w[:, None] * tl.load(o_i, mask=mask, other=0.0).to(tl.float32)
            o_i += stride_op
            lse_i += stride_lp
        tl.store(out_o_ptr + r[:, None] * stride_out_r + d[None, :], acc.to(out_o_ptr.dtype.element_ty), mask=mask)
        if tl.program_id(1) == 0:
            tl.store(out_lse_ptr + r, tl.where(total == 0.0, float("-inf"), top + tl.log(safe)), mask=r < R)

    _MERGE = LazyKernel(_merge_kernel)


def merge_partials(
    o: Tensor, lse: Tensor, *, out: tuple[Tensor, Tensor] | None = None, backend: str = "auto"
) -> AttentionState:
    """Exact merge of P partial attention states of the same rows.

    o    [P, *rows, Dv]  float32/bfloat16/float16, e.g. [P, B, H, Dv]; 0 where a partial is empty
    lse  [P, *rows]      float32, natural log; -inf marks an empty partial
    out  optional (o [*rows, Dv] dtype of o, lse [*rows] float32), contiguous, written in place
    Returns `(o [*rows, Dv], lse [*rows])`; a row empty in every partial is `(0, -inf)`.
    Values are not checked for NaN/Inf (that would sync the device); empty partials must hold finite o.
    """
    _check(o, lse)
    rows, dv = o.shape[1:-1], o.shape[-1]
    if out is not None:
        expect_out(WHAT, "out[0]", out[0], (*rows, dv), o.dtype, o.device)
        expect_out(WHAT, "out[1]", out[1], tuple(rows), torch.float32, o.device)
    if not use_triton(backend, o.device, WHAT):
        return _fill(merge_partials_reference(o, lse), out)
    res_o, res_lse = out if out is not None else (o.new_empty(*rows, dv), lse.new_empty(rows))
    P, R = o.shape[0], lse[0].numel()
    launch_merge(o.reshape(P, R, dv), lse.reshape(P, R), res_o.view(R, dv), res_lse.view(R))
    return AttentionState(res_o, res_lse)


def launch_merge(o: Tensor, lse: Tensor, out_o: Tensor, out_lse: Tensor) -> None:
    """Unchecked launch. o [P, R, Dv] (any float dtype), lse [P, R] float32 -> out_o [R, Dv], out_lse [R] (contiguous)."""
    P, R, dv = o.shape
    if R == 0:
        return
    o = dense_last(o)
    block_d = min(triton.next_power_of_2(dv), 512)
    block_r = min(16, max(1, 2048 // block_d))  # ~2048 values per partial per program
    grid = (triton.cdiv(R, block_r), triton.cdiv(dv, block_d))
    _MERGE.get()[grid](
        o, lse, out_o, out_lse, R, dv,
        o.stride(0), o.stride(1), lse.stride(0), lse.stride(1), out_o.stride(0),
        P=P, BLOCK_P=max(2, triton.next_power_of_2(P)), BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )  # fmt: skip


def merge_partials_reference(o: Tensor, lse: Tensor) -> AttentionState:
    """The torch oracle: `qroute.attention.merge_states` over the P partials (same contract)."""
    return merge_states([AttentionState(o[p], lse[p]) for p in range(o.shape[0])], check=False)


def _fill(state: AttentionState, out: tuple[Tensor, Tensor] | None) -> AttentionState:
    if out is None:
        return state
    out[0].copy_(state.o)
    out[1].copy_(state.lse)
    return AttentionState(*out)


def _check(o: Tensor, lse: Tensor) -> None:
    if o.dim() < 2:
        raise QrouteError(f"{WHAT}: o shape {tuple(o.shape)}: expected [P, *rows, Dv]")
    if o.shape[0] < 1 or o.shape[-1] < 1:
        raise QrouteError(f"{WHAT}: o shape {tuple(o.shape)}: expected P >= 1 partials and Dv >= 1")
    expect_dtype(WHAT, "o", o, FLOATS)
    expect_dtype(WHAT, "lse", lse, (torch.float32,))
    expect_shape(WHAT, "lse", lse, o.shape[:-1])
    same_device(WHAT, [("o", o), ("lse", lse)])
