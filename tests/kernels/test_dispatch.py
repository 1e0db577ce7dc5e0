"""Dispatch: qroute.kernels imports and falls back to torch without Triton; backend names are checked."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qroute.errors import QrouteError
from qroute.kernels import has_triton, merge_partials, merge_partials_reference, use_triton
from qroute.kernels.dispatch import tl

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_TRITON = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # `import triton` now raises ImportError
    import torch
    import qroute.kernels as k
    from qroute.attention import RopeSpec
    from qroute.errors import QrouteError
    assert not k.has_triton() and not k.triton_runs_on(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q, cache = torch.randn(2, 3, 576, generator=g), torch.randn(6, 16, 576, generator=g)
    table = torch.tensor([[4, -1, 0], [-1, -1, -1]])
    got = k.sparse_mla(q, cache, table, 0.1)
    ref = k.sparse_mla_reference(q, cache, table, 0.1)
    assert torch.equal(got.o, ref.o) and torch.equal(got.lse, ref.lse)
    o, lse = torch.randn(3, 2, 4, 8, generator=g), torch.randn(3, 2, 4, generator=g)
    assert torch.equal(k.merge_partials(o, lse).o, k.merge_partials_reference(o, lse).o)
    kv = torch.randn(2, 5, 576, generator=g)
    assert torch.equal(k.splice_rope(kv, 7, RopeSpec(64)), k.splice_rope_reference(kv, 7, RopeSpec(64)))
    store = torch.randn(2, 4, 16, 8, generator=g)
    assert torch.equal(k.gather_store(store, [3, 1]), k.gather_store_reference(store, [3, 1]))
    try:
        k.merge_partials(o, lse, backend="triton")
    except QrouteError as e:
        assert "triton is not installed" in str(e)
    else:
        raise AssertionError("backend='triton' without triton should fail")
    import benchmarks.kernels  # the benchmark module imports without triton too
    print("ok")
    """
)


def test_import_and_fallback_without_triton():
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(QrouteError, match="backend='cuda': expected one of auto, triton, torch"):
        use_triton("cuda", torch.device("cpu"), "merge_partials")


def test_torch_backend_never_needs_triton():
    o, lse = torch.randn(2, 3, 5), torch.randn(2, 3)
    assert torch.equal(merge_partials(o, lse, backend="torch").o, merge_partials_reference(o, lse).o)


@pytest.mark.skipif(not has_triton(), reason="triton not installed")
def test_auto_takes_triton_where_it_runs(monkeypatch):
    """On CPU under TRITON_INTERPRET=1 (set by conftest without CUDA) `auto` must not take the reference."""
    import qroute.kernels.merge as merge

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not use_triton("auto", device, "test"):
        pytest.skip("Triton does not run here (CPU without TRITON_INTERPRET=1)")
    monkeypatch.setattr(merge, "merge_partials_reference", lambda *a: (_ for _ in ()).throw(AssertionError("fell back")))
    o, lse = torch.randn(2, 3, 5, device=device), torch.randn(2, 3, device=device)
    assert merge.merge_partials(o, lse).o.shape == (3, 5)


def _twice(x):  # a helper a LazyKernel jits with its kernel (plain function: jitted for the mode in use)
    return x * 2


if tl is not None:

    def _double_plus_one(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(y_ptr + i, _twice(tl.load(x_ptr + i, mask=i < n)) + 1, mask=i < n)


def test_lazy_kernel_jits_its_helpers_for_the_mode_in_use():
    """A kernel's helpers are jitted with it, per mode, and resolved by name in the kernel (not in the module)."""
    pytest.importorskip("triton")
    from qroute.kernels.dispatch import LazyKernel, triton_runs_on

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not triton_runs_on(dev):
        pytest.skip("Triton runs neither on a GPU nor in its interpreter here")
    kernel = LazyKernel(_double_plus_one, helpers=(_twice,))
    x = torch.arange(5, dtype=torch.float32, device=dev)
    y = torch.zeros_like(x)
    kernel.get()[(1,)](x, y, 5, BLOCK=8)
    assert torch.equal(y.cpu(), torch.arange(5, dtype=torch.float32) * 2 + 1)
    assert kernel.get() is kernel.get()  # built once per mode
    assert _twice is not None and globals()["_twice"](3) == 6  # the module's own function is untouched
