"""`runtime.ops`: the requester's compute calls that the executor and the quick calibration share, against the
plain-torch oracle on fresh random inputs (on a GPU: the kernels' paths against the CPU's; skipped without one)."""

import pytest
import torch

from qroute.attention import AttentionState, RopeSpec, YarnScaling, attend, merge_states, rotate
from qroute.runtime.ops import attend_moved, merge_parts, splice_moved_

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
LATENT, ROPE = 512, 64
YARN = RopeSpec(ROPE, yarn=YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0))


def _states(g, parts: int, rows: int, empty_row: int | None = None) -> list[AttentionState]:
    out = []
    for _ in range(parts):
        lse = torch.randn(rows, generator=g)
        if empty_row is not None:
            lse[empty_row] = float("-inf")
        o = torch.randn(rows, LATENT, generator=g)
        if empty_row is not None:
            o[empty_row] = 0
        out.append(AttentionState(o, lse))
    return out


def rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("parts", [1, 2, 5])
def test_merge_parts_is_the_exact_merge(parts):
    g = torch.Generator().manual_seed(parts)
    states = _states(g, parts, 48, empty_row=3 if parts > 1 else None)
    got, want = merge_parts(states), merge_states(states)
    assert torch.equal(got.o, want.o) and torch.equal(got.lse, want.lse)
    if parts == 1:
        assert got.o is states[0].o  # nothing to merge: the state as it came


def test_attend_moved_flattens_tokens_times_heads():
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(3, 16, LATENT + ROPE, generator=g), torch.randn(64, LATENT + ROPE, generator=g)
    got = attend_moved(q, keys, 0.05, LATENT, block_size=16)
    want = attend(q.reshape(48, -1), keys, keys[:, :LATENT], 0.05)
    assert got.o.shape == (48, LATENT) and got.lse.shape == (48,)
    assert rel(got.o, want.o) <= 1e-6 and rel(got.lse, want.lse) <= 1e-6


def test_splice_moved_rotates_only_the_rope_columns():
    kv = torch.randn(3, 40, LATENT + ROPE, generator=torch.Generator().manual_seed(1))
    before = kv.clone()
    splice_moved_(kv, 777, YARN, LATENT)
    assert torch.equal(kv[..., :LATENT], before[..., :LATENT])
    assert rel(kv[..., LATENT:], rotate(before[..., LATENT:], 777, YARN)) <= 1e-6


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("parts", [2, 3])
def test_merge_parts_on_gpu_matches_the_cpu(parts):
    g = torch.Generator().manual_seed(10 + parts)
    states = _states(g, parts, 256, empty_row=7)
    got = merge_parts([AttentionState(s.o.cuda(), s.lse.cuda()) for s in states])
    want = merge_states(states)
    assert got.o.is_cuda and rel(got.o, want.o) <= 1e-5
    lse = got.lse.cpu()
    assert lse[7] == float("-inf") and float(got.o[7].abs().max()) == 0.0  # empty in every part: (0, -inf)
    assert torch.allclose(lse, want.lse, atol=1e-5, rtol=0)  # allclose takes equal infinities as equal


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_attend_moved_on_gpu_matches_the_cpu(dtype, tol):
    g = torch.Generator().manual_seed(2)
    q = (torch.randn(4, 16, LATENT + ROPE, generator=g) * 0.05).to(dtype)
    keys = torch.randn(128, LATENT + ROPE, generator=g).to(dtype)
    got = attend_moved(q.cuda(), keys.cuda(), 0.07, LATENT, block_size=16)
    want = attend(q.float().reshape(64, -1), keys.float(), keys.float()[:, :LATENT], 0.07)
    assert got.o.is_cuda and got.o.shape == (64, LATENT)
    assert rel(got.o, want.o) <= tol and float((got.lse.cpu() - want.lse).abs().max()) <= 1e-2


@cuda
@pytest.mark.gpu
def test_splice_moved_on_gpu_matches_the_cpu():
    kv = torch.randn(3, 96, LATENT + ROPE, generator=torch.Generator().manual_seed(3))
    gpu = kv.cuda()
    splice_moved_(gpu, 4096, YARN, LATENT)
    splice_moved_(kv, 4096, YARN, LATENT)
    assert rel(gpu, kv) <= 1e-5
