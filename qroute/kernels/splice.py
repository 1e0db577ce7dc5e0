"""Fetch's splice: re-rotate the rope part of every layer of a chunk by `+offset`, in one launch.

Matches `qroute.attention.rope.splice` exactly: stored rope parts are in half layout (pair
`i` is `(x[i], x[i + dim/2])`, whatever `RopeSpec.interleave` says: `embed` de-interleaved
them once), the rotation is pure (YaRN's attention factor is already inside stored keys and
is not applied again), and YaRN enters only through `RopeSpec.inv_freq()`. Angles
`offset * inv_freq` are computed in float64 in the kernel (as `rope.rotate` does on the
host), cos/sin then rounded to float32; inv_freq is copied to the device once per spec.
Only the last `spec.dim` columns are read and written: the latent never moves.
"""

from functools import lru_cache

import torch
from torch import Tensor

from qroute.attention import RopeSpec
from qroute.attention import splice as rope_splice
from qroute.errors import QrouteError
from qroute.kernels.checks import FLOATS, expect_dtype, expect_ndim
from qroute.kernels.dispatch import LazyKernel, tl, triton, use_triton

WHAT = "splice_rope"
BLOCK_TOKENS = 64

if triton is not None:

    def _splice_kernel(
        kv_ptr, inv_freq_ptr,  # kv [L, T, D] rotated in place in columns [rope_start, D); inv_freq [HALF] float64
        offset, T, stride_l, stride_t, rope_start, HALF,
        BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T] tokens of layer program_id(1)
        c = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF] pair index
        angle = offset.to(tl.float64) * tl.load(inv_freq_ptr + c, mask=c < HALF, other=0.0)  # float64, as rope.rotate
        cos, sin = tl.cos(angle).to(tl.float32), tl.sin(angle).to(tl.float32)
        base = tl.program_id(1).to(tl.int64) * stride_l + t.to(tl.int64) * stride_t + rope_start  # [BLOCK_T]
        mask = (t[:, None] < T) & (c[None, :] < HALF)
        p1 = kv_ptr + base[:, None] + c[None, :]
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_HALF]
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(p1, (x1 * cos[None, :] - x2 * sin[None, :]).to(kv_ptr.dtype.element_ty), mask=mask)
        tl.store(p1 + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(kv_ptr.dtype.element_ty), mask=mask)

    _SPLICE = LazyKernel(_splice_kernel, do_not_specialize=["offset"])  # one compile for every offset


def splice_rope_(kv: Tensor, offset: int, spec: RopeSpec, *, backend: str = "auto") -> Tensor:
    """Rotate the rope part (last `spec.dim` columns) of `kv` by `+offset` IN PLACE; returns `kv`.

    kv      [L, T, D] float32/bfloat16/float16, any strides with the last dim contiguous
            (e.g. a chunk's KV of every layer; D = 576 for MLA, rope in columns [D - 64, D))
    offset  integer position shift (0, positive or negative)
    spec    the model's RopeSpec (theta, YaRN); only `inv_freq()` is used
    """
    _check(kv, offset, spec)
    if not use_triton(backend, kv.device, WHAT):
        kv[..., -spec.dim :] = rope_splice(kv[..., -spec.dim :], offset, spec)
        return kv
    L, T, D = kv.shape
    if L * T == 0:
        return kv
    half = spec.dim // 2
    if L > 65535:
        raise QrouteError(f"{WHAT}: L={L} layers: expected <= 65535 (grid axis 1)")
    grid = (triton.cdiv(T, BLOCK_TOKENS), L)  # no division in the kernel: a program owns tokens of one layer
    _SPLICE.get()[grid](
        kv, inv_freq_on(spec, kv.device), int(offset), T, kv.stride(0), kv.stride(1), D - spec.dim, half,
        BLOCK_T=BLOCK_TOKENS, BLOCK_HALF=triton.next_power_of_2(half),
    )  # fmt: skip
    return kv


def splice_rope(kv: Tensor, offset: int, spec: RopeSpec, *, backend: str = "auto") -> Tensor:
    """Out of place: a copy of `kv [L, T, D]` with its rope part rotated by `+offset` (see `splice_rope_`)."""
    _check(kv, offset, spec)
    return splice_rope_(kv.clone(), offset, spec, backend=backend)


@lru_cache(maxsize=64)
def inv_freq_on(spec: RopeSpec, device: torch.device) -> Tensor:
    """`spec.inv_freq()` `[dim / 2]` float64 on `device`, copied once per (spec, device): later calls make no
    host copy, so they can be captured in a CUDA graph (make the first call before capturing)."""
    return spec.inv_freq().to(device)


def splice_rope_reference(kv: Tensor, offset: int, spec: RopeSpec) -> Tensor:
    """The torch oracle, out of place: latent columns as they are, rope part through `qroute.attention.splice`."""
    rope = rope_splice(kv[..., -spec.dim :], offset, spec)
    return torch.cat((kv[..., : -spec.dim], rope), dim=-1)


def _check(kv: Tensor, offset: int, spec: RopeSpec) -> None:
    expect_ndim(WHAT, "kv", kv, 3, "[L, T, D]")
    expect_dtype(WHAT, "kv", kv, FLOATS)
    if not isinstance(spec, RopeSpec):
        raise QrouteError(f"{WHAT}: spec is {type(spec).__name__}: expected a RopeSpec")
    if isinstance(offset, bool) or not hasattr(offset, "__index__") or isinstance(offset, Tensor):
        raise QrouteError(f"{WHAT}: offset={offset!r}: expected an integer")
    if kv.shape[-1] < spec.dim:
        raise QrouteError(f"{WHAT}: kv row width {kv.shape[-1]}: expected >= rope dim {spec.dim}")
    if kv.shape[-1] > 1 and kv.stride(-1) != 1:
        raise QrouteError(f"{WHAT}: kv strides {kv.stride()}: expected the last dim contiguous (in-place kernel)")
