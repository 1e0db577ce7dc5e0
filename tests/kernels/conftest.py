"""Kernel tests: on a machine without CUDA, Triton kernels run in Triton's CPU interpreter.

Triton reads TRITON_INTERPRET when a kernel is jitted; qroute.kernels jits lazily on first
launch, so setting it here (before any test launches a kernel) is enough.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
