"""Where a kernel runs: Triton on CUDA (or in Triton's interpreter on CPU), else the torch reference.

Importing qroute never needs Triton: `triton` and `tl` are None when it is missing, and
kernel modules define their `@jit` functions only when it is present. Kernels are jitted
lazily, on first launch, so `TRITON_INTERPRET=1` only has to be set before that launch
(Triton reads it when `triton.jit` runs, not at import).

Dispatch rule (`backend="auto"`): Triton when every tensor is on CUDA, or on CPU with
`TRITON_INTERPRET=1`; the torch reference otherwise. `backend="triton"` raises if Triton
cannot run there; `backend="torch"` always takes the reference.
"""

import os
import types
from typing import Callable, Sequence

import torch

from qroute.errors import QrouteError

try:  # optional dependency: only the GPU path and the interpreter tests need it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by tests that hide triton
    triton = None
    tl = None

BACKENDS = ("auto", "triton", "torch")


def has_triton() -> bool:
    """True when `import triton` succeeded."""
    return triton is not None


def interpreting() -> bool:
    """True when Triton would build kernels for its CPU interpreter (`TRITON_INTERPRET=1`)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of `device`."""
    if triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def use_triton(backend: str, device: torch.device, what: str) -> bool:
    """Resolve `backend` for tensors on `device`: True = Triton kernel, False = torch reference."""
    if backend not in BACKENDS:
        raise QrouteError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    runs = triton_runs_on(device)
    if backend == "triton" and not runs:
        why = "triton is not installed" if triton is None else "set TRITON_INTERPRET=1 for CPU tensors"
        raise QrouteError(f"{what}: backend='triton' on device {device}: {why}")
    return runs


def same_device(what: str, tensors: Sequence[tuple[str, torch.Tensor]]) -> torch.device:
    """The one device of named tensors, or an error naming the first that differs."""
    device = tensors[0][1].device
    for name, t in tensors[1:]:
        if t.device != device:
            raise QrouteError(f"{what}: {name} is on {t.device}: expected {device} like {tensors[0][0]}")
    return device


class LazyKernel:
    """A Triton kernel jitted on first use, and again if `TRITON_INTERPRET` flips (the interpreter needs its own build).

    `helpers`: the plain functions the kernel calls by name (and that call each other), jitted with it for the same mode
    (a `triton.jit` at import would fix the mode too early): per mode the kernel and its helpers see the jitted helpers
    in a copy of the kernel's module globals.
    """

    def __init__(self, fn: Callable, do_not_specialize: Sequence[str] = (), helpers: Sequence[Callable] = ()) -> None:
        self.fn = fn
        self.do_not_specialize = list(do_not_specialize)  # runtime ints that vary: no recompile per value
        self.helpers = tuple(helpers)
        self._built: dict[bool, object] = {}

    def get(self):
        """The launchable kernel for the current mode."""
        mode = interpreting()
        if mode not in self._built:
            fn = self.fn
            if self.helpers:
                scope = dict(fn.__globals__)
                scope.update({h.__name__: triton.jit(_with_globals(h, scope)) for h in self.helpers})
                fn = _with_globals(fn, scope)
            self._built[mode] = triton.jit(fn, do_not_specialize=self.do_not_specialize)
        return self._built[mode]


def _with_globals(fn: Callable, scope: dict) -> Callable:
    """`fn` (same code, so Triton reads the same source) looking its global names up in `scope`."""
    new = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__, new.__annotations__, new.__qualname__ = fn.__kwdefaults__, fn.__annotations__, fn.__qualname__
    return new
