"""splice_rope_ (Triton, one launch for all layers) equals qroute.attention.splice on the rope part; latent untouched."""

import pytest
import torch

pytest.importorskip("triton", exc_type=ImportError)  # missing or broken install: skip

from qroute.attention import RopeSpec, YarnScaling, rotate  # noqa: E402
from qroute.errors import QrouteError  # noqa: E402
from qroute.kernels import splice_rope, splice_rope_, splice_rope_reference  # noqa: E402
from tests.kernels.helpers import DEVICE, TOL, gen, gpu, needs_compiled_cuda, rel_err  # noqa: E402

PLAIN = RopeSpec(64)
YARN = RopeSpec(64, yarn=YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0))  # DeepSeek-V3's scaling
HALF_SPLIT = RopeSpec(64, theta=50000.0, interleave=False)


def random_kv(seed, L, T, D=576, dtype=torch.float32, device=DEVICE):
    return torch.randn(L, T, D, generator=gen(seed)).to(dtype).to(device)


@pytest.mark.parametrize("spec", [PLAIN, YARN, HALF_SPLIT], ids=["plain", "yarn", "half-split-theta"])
@pytest.mark.parametrize("offset", [0, 1, 37, -300, 4097, 1_000_003])
def test_matches_reference_fp32(spec, offset):
    kv = random_kv(abs(offset) % 97, 3, 29)
    before = kv.clone()
    out = splice_rope_(kv, offset, spec, backend="triton")
    assert out is kv  # in place
    ref = splice_rope_reference(before, offset, spec)
    assert rel_err(kv, ref) <= 1e-6
    assert torch.equal(kv[..., :512], before[..., :512])  # the latent never moves
    if offset == 0:
        assert torch.equal(kv, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes(dtype):
    kv = random_kv(4, 2, 33, dtype=dtype)
    got = splice_rope(kv, 1234, YARN, backend="triton")
    assert got.dtype == dtype and rel_err(got, splice_rope_reference(kv, 1234, YARN)) <= TOL[dtype]
    assert torch.equal(got[..., :512], kv[..., :512])


def test_out_of_place_leaves_input_and_round_trip_restores():
    kv = random_kv(5, 4, 17)
    before = kv.clone()
    moved = splice_rope(kv, 777, YARN, backend="triton")
    assert torch.equal(kv, before)
    back = splice_rope_(moved, -777, YARN, backend="triton")
    assert rel_err(back, before) <= 1e-5


def test_rotation_is_exactly_rope_rotate_of_the_rope_part():
    kv = random_kv(6, 2, 9, D=64)  # rope only
    got = splice_rope(kv, 4096, YARN, backend="triton")
    assert rel_err(got, rotate(kv, 4096, YARN)) <= 1e-6


def test_strided_view_touches_only_its_rows():
    """A chunk that is a view into a bigger buffer (strides on L and T): rows outside stay as they were."""
    big = random_kv(7, 5, 40)
    before = big.clone()
    view = big[1:4, 3:31:2]  # [3, 14, 576], non-contiguous in L and T
    splice_rope_(view, 99, PLAIN, backend="triton")
    assert rel_err(view, splice_rope_reference(before[1:4, 3:31:2], 99, PLAIN)) <= 1e-6
    untouched = torch.ones(5, 40, dtype=torch.bool)
    untouched[1:4, 3:31:2] = False
    assert torch.equal(big[untouched.to(big.device)], before[untouched.to(big.device)])


def test_one_token_one_layer_and_empty():
    kv = random_kv(8, 1, 1)
    assert rel_err(splice_rope(kv, 5, YARN, backend="triton"), splice_rope_reference(kv, 5, YARN)) <= 1e-6
    empty = random_kv(9, 2, 0)
    assert splice_rope_(empty, 5, YARN, backend="triton").shape == (2, 0, 576)


def test_bad_inputs_are_one_line_errors():
    kv = random_kv(1, 1, 4)
    with pytest.raises(QrouteError, match="kv shape"):
        splice_rope_(kv[0], 3, PLAIN)
    with pytest.raises(QrouteError, match="offset=2.5"):
        splice_rope_(kv, 2.5, PLAIN)
    with pytest.raises(QrouteError, match="row width 32"):
        splice_rope_(kv[..., :32], 3, PLAIN)
    with pytest.raises(QrouteError, match="last dim contiguous"):
        splice_rope_(random_kv(2, 1, 4, D=1152)[..., ::2], 3, PLAIN)
    with pytest.raises(QrouteError, match="kv dtype"):
        splice_rope_(kv.int(), 3, PLAIN)


@gpu
@needs_compiled_cuda
def test_gpu_2048_tokens_61_layers_bf16():
    kv = random_kv(0, 61, 2048, dtype=torch.bfloat16, device="cuda")
    ref = splice_rope_reference(kv, 4096, YARN)
    splice_rope_(kv, 4096, YARN)
    assert rel_err(kv, ref) <= 1e-2
