"""One-line input checks shared by the kernel wrappers: each error names the bad value and what was expected."""

from typing import Sequence

import torch
from torch import Tensor

from qroute.errors import QrouteError

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
INDEX = (torch.int32, torch.int64)


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def expect_dtype(what: str, name: str, t: Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        raise QrouteError(f"{what}: {name} dtype {t.dtype}: expected {_names(allowed)}")


def expect_ndim(what: str, name: str, t: Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise QrouteError(f"{what}: {name} shape {tuple(t.shape)}: expected {layout}")


def expect_shape(what: str, name: str, t: Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise QrouteError(f"{what}: {name} shape {tuple(t.shape)}: expected {tuple(shape)}")


def expect_out(what: str, name: str, t: Tensor, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """An `out=` buffer: exact shape, dtype, device, and contiguous (kernels write it densely)."""
    expect_shape(what, name, t, shape)
    expect_dtype(what, name, t, (dtype,))
    if t.device != device:
        raise QrouteError(f"{what}: {name} is on {t.device}: expected {device}")
    if not t.is_contiguous():
        raise QrouteError(f"{what}: {name} strides {t.stride()}: expected a contiguous tensor")


def dense_last(t: Tensor) -> Tensor:
    """`t` itself when its last dim is contiguous, else a contiguous copy (kernels index columns densely)."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()
