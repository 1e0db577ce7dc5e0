"""Shared by the kernel tests: where kernels run, error measures, poisoned buffers."""

import pytest
import torch

from qroute.kernels.dispatch import interpreting

# Small tests run where Triton runs: compiled on CUDA, else the CPU interpreter.
DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
# Tolerance per compute dtype (relative to the reference's largest magnitude). bf16/fp16
# outputs differ by rounding (and the interpreter truncates fp32 -> bf16 instead of rounding).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}

gpu = pytest.mark.gpu
needs_compiled_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or interpreting(), reason="needs CUDA with compiled (not interpreted) Triton"
)


def rel_err(a, b) -> float:
    """Max abs difference over the reference's max abs value (inputs upcast to float64)."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if b.numel() else 0.0


def lse_err(a, b) -> float:
    """LSE error: equal -inf where the reference is -inf, else absolute near 0 / relative when large."""
    a, b = a.double().cpu(), b.double().cpu()
    empty = b == float("-inf")
    assert torch.equal(a == float("-inf"), empty), "empty rows differ"
    if bool(empty.all()):
        return 0.0
    return float((a[~empty] - b[~empty]).abs().max() / b[~empty].abs().max().clamp_min(1.0))


def poisoned(shape, dtype, device=DEVICE):
    """A buffer full of NaN: any element a kernel forgets to write stays NaN."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
