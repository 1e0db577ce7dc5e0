"""merge_partials (Triton) equals merge_states (torch) and a float64 oracle; empty partials are neutral."""

import pytest
import torch

pytest.importorskip("triton", exc_type=ImportError)  # missing or broken install: skip

from qroute.errors import QrouteError  # noqa: E402
from qroute.kernels import merge_partials, merge_partials_reference  # noqa: E402
from tests.kernels.helpers import DEVICE, TOL, gen, gpu, lse_err, needs_compiled_cuda, poisoned, rel_err  # noqa: E402


def random_partials(seed, P, rows, dv, dtype, empty_frac=0.3, device=DEVICE):
    """o [P, *rows, Dv], lse [P, *rows] with a random fraction of partials empty (0, -inf)."""
    g = gen(seed)
    o = torch.randn(P, *rows, dv, generator=g)
    lse = torch.randn(P, *rows, generator=g) * 4
    empty = torch.rand(P, *rows, generator=g) < empty_frac
    lse[empty] = float("-inf")
    o[empty] = 0.0
    return o.to(dtype).to(device), lse.to(device)


def oracle64(o, lse):
    """exp(lse_p - logsumexp) weights in float64."""
    lse64 = lse.double().cpu()
    total = torch.logsumexp(lse64, dim=0)
    w = torch.exp(lse64 - torch.where(torch.isfinite(total), total, 0.0))
    return (w.unsqueeze(-1) * o.double().cpu()).sum(0), total


@pytest.mark.parametrize("P, rows, dv", [(1, (3, 5), 40), (2, (1, 7), 512), (5, (4, 3), 100), (8, (2, 13), 64), (3, (11,), 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_matches_reference_and_float64(P, rows, dv, dtype):
    o, lse = random_partials(P * 100 + dv, P, rows, dv, dtype)
    got = merge_partials(o, lse, backend="triton")
    ref = merge_partials_reference(o, lse)
    o64, lse64 = oracle64(o, lse)
    assert got.o.dtype == dtype and got.lse.dtype == torch.float32 and got.o.shape == (*rows, dv)
    assert rel_err(got.o, ref.o) <= TOL[dtype]
    assert rel_err(got.o, o64) <= TOL[dtype]
    assert lse_err(got.lse, ref.lse) <= 1e-6 and lse_err(got.lse, lse64) <= 1e-6


def test_all_empty_rows_give_zero_and_minus_inf_and_out_is_fully_written():
    o, lse = random_partials(7, 4, (3, 6), 48, torch.float32)
    lse[:, 1, 2], o[:, 1, 2] = float("-inf"), 0.0  # one row empty in every partial
    lse[:, 2], o[:, 2] = float("-inf"), 0.0  # a whole batch entry empty
    out = (poisoned((3, 6, 48), torch.float32), poisoned((3, 6), torch.float32))
    got = merge_partials(o, lse, out=out, backend="triton")
    assert got.o is out[0] and got.lse is out[1]
    assert not bool(got.o.isnan().any()) and not bool(got.lse.isnan().any())
    assert bool((got.o[1, 2] == 0).all()) and bool((got.o[2] == 0).all())
    assert bool((got.lse[1, 2] == float("-inf")).all()) and bool((got.lse[2] == float("-inf")).all())
    assert rel_err(got.o, merge_partials_reference(o, lse).o) <= 1e-5


def test_p1_is_identity_and_empty_partial_is_neutral():
    o, lse = random_partials(3, 1, (2, 9), 33, torch.float32, empty_frac=0.2)
    got = merge_partials(o, lse, backend="triton")
    assert rel_err(got.o, o[0]) <= 1e-6 and lse_err(got.lse, lse[0]) <= 1e-7
    empty_o, empty_lse = torch.zeros_like(o), torch.full_like(lse, float("-inf"))
    both = merge_partials(torch.cat([o, empty_o]), torch.cat([lse, empty_lse]), backend="triton")
    assert rel_err(both.o, o[0]) <= 1e-6 and lse_err(both.lse, lse[0]) <= 1e-7


def test_merge_order_does_not_matter():
    o, lse = random_partials(11, 6, (3, 4), 72, torch.float32)
    perm = torch.tensor([4, 0, 5, 2, 1, 3], device=o.device)
    a = merge_partials(o, lse, backend="triton")
    b = merge_partials(o[perm], lse[perm], backend="triton")
    assert rel_err(a.o, b.o) <= 1e-6 and lse_err(a.lse, b.lse) <= 1e-7


def test_auto_backend_matches_reference():
    o, lse = random_partials(5, 3, (2, 3), 24, torch.float32)
    assert rel_err(merge_partials(o, lse).o, merge_partials_reference(o, lse).o) <= 1e-5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda o, lse: (o, lse.half()), "lse dtype"),
        (lambda o, lse: (o, lse[:, :1]), "lse shape"),
        (lambda o, lse: (o.int(), lse), "o dtype"),
        (lambda o, lse: (o[:0], lse[:0]), "P >= 1"),
        (lambda o, lse: (o[0, 0, 0], lse[0, 0, 0]), "o shape"),
    ],
)
def test_bad_inputs_are_one_line_errors(make, message):
    o, lse = random_partials(1, 2, (2, 3), 8, torch.float32)
    with pytest.raises(QrouteError, match=message):
        merge_partials(*make(o, lse), backend="triton")


def test_bad_out_buffer_is_rejected():
    o, lse = random_partials(1, 2, (2, 3), 8, torch.float32)
    with pytest.raises(QrouteError, match="out\\[0\\] dtype"):
        merge_partials(o, lse, out=(poisoned((2, 3, 8), torch.bfloat16), poisoned((2, 3), torch.float32)))


@gpu
@needs_compiled_cuda
@pytest.mark.parametrize("P", [2, 8])
def test_merge_on_gpu_at_benchmark_shape(P):
    o, lse = random_partials(P, P, (64, 128), 512, torch.bfloat16, device="cuda")
    got = merge_partials(o, lse)
    o64, lse64 = oracle64(o, lse)
    assert rel_err(got.o, o64) <= 1e-2 and lse_err(got.lse, lse64) <= 1e-5
