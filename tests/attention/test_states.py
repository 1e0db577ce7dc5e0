"""Attention states: any partition merged in any order equals full attention (plain-torch oracle)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.attention import attend, empty_state, gather_blocks, merge_states, partial_attention
from qroute.errors import QrouteError


def oracle(q, k, v, scale):
    """Plain-torch float64 softmax attention: the single-instance reference."""
    scores = (q.double() @ k.double().T) * scale
    return torch.softmax(scores, dim=-1) @ v.double(), torch.logsumexp(scores, dim=-1)


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def lse_err(a, b):
    """LSE error: absolute near 0 (it is the relative error of the softmax normaliser), relative when large."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1.0))


def random_inputs(seed, rows, keys, dim, v_dim, dtype, sharpness=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(rows, dim, generator=g) * sharpness).to(dtype)
    k = torch.randn(keys, dim, generator=g).to(dtype)
    v = torch.randn(keys, v_dim, generator=g).to(dtype)
    return q, k, v


@st.composite
def partitions(draw):
    keys = draw(st.integers(1, 96))
    parts = draw(st.integers(1, min(keys, 7)))
    cuts = sorted(draw(st.lists(st.integers(1, keys - 1), min_size=parts - 1, max_size=parts - 1, unique=True))) if keys > 1 else []
    bounds = [0, *cuts, keys]
    order = draw(st.permutations(list(range(len(bounds) - 1))))
    return keys, bounds, order


@settings(max_examples=60, deadline=None)
@given(
    part=partitions(),
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 9),
    dim=st.sampled_from([8, 24, 72]),
    sharpness=st.sampled_from([0.1, 1.0, 6.0]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_merge_of_any_partition_in_any_order_equals_full_attention(part, seed, rows, dim, sharpness, dtype):
    keys, bounds, order = part
    q, k, v = random_inputs(seed, rows, keys, dim, dim - 4, dtype, sharpness)
    scale = 1 / math.sqrt(dim)
    states = [attend(q, k[bounds[i] : bounds[i + 1]], v[bounds[i] : bounds[i + 1]], scale) for i in order]
    merged = merge_states(states)
    o_ref, lse_ref = oracle(q, k, v, scale)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert merged.o.dtype == dtype and merged.lse.dtype == torch.float32
    assert rel_err(merged.o, o_ref) <= tol
    assert lse_err(merged.lse, lse_ref) <= 1e-5  # lse is float32 whatever the input dtype


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), nblocks=st.integers(1, 12), block_size=st.integers(1, 8), holders=st.integers(1, 4))
def test_blocks_spread_over_holders_merge_to_attention_over_the_selection(seed, nblocks, block_size, holders):
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(nblocks, block_size, 40, generator=g)
    q = torch.randn(5, 40, generator=g)
    selected = torch.randperm(nblocks, generator=g)[: max(1, nblocks // 2)].tolist()
    owner = torch.randint(0, holders, (len(selected),), generator=g).tolist()
    states = [partial_attention(q, cache, [b for b, o in zip(selected, owner) if o == h], 0.2, v_dim=32) for h in range(holders)]
    keys = cache[selected].reshape(-1, 40)
    o_ref, lse_ref = oracle(q, keys, keys[:, :32], 0.2)
    merged = merge_states(states)
    assert rel_err(merged.o, o_ref) <= 1e-5
    assert lse_err(merged.lse, lse_ref) <= 1e-5


def test_empty_selection_is_zero_and_minus_inf_and_merges_neutrally():
    q, k, v = random_inputs(1, 3, 10, 16, 12, torch.float32)
    empty = partial_attention(q, k.reshape(5, 2, 16), [], 0.25, v_dim=12)
    assert torch.equal(empty.o, torch.zeros(3, 12))
    assert torch.all(empty.lse == float("-inf"))
    full = attend(q, k, v, 0.25)
    merged = merge_states([empty, full, empty_state(q, 12)])
    assert torch.allclose(merged.o, full.o) and torch.allclose(merged.lse, full.lse)


def test_all_partials_empty_stay_empty():
    q = torch.randn(4, 8)
    merged = merge_states([empty_state(q, 6), empty_state(q, 6)])
    assert torch.equal(merged.o, torch.zeros(4, 6)) and torch.all(merged.lse == float("-inf"))
    assert not torch.isnan(merged.o).any()


def test_one_token_gives_its_value_and_its_score():
    q, k, v = random_inputs(2, 2, 1, 8, 8, torch.float32)
    s = attend(q, k, v, 0.5)
    assert torch.allclose(s.o, v.expand(2, 8))
    assert torch.allclose(s.lse, (q @ k.T).squeeze(-1) * 0.5)


def test_one_block_on_one_holder_equals_full():
    g = torch.Generator().manual_seed(3)
    cache = torch.randn(1, 16, 24, generator=g)
    q = torch.randn(7, 24, generator=g)
    s = merge_states([partial_attention(q, cache, [0], 0.3, v_dim=20)])
    o_ref, lse_ref = oracle(q, cache[0], cache[0][:, :20], 0.3)
    assert rel_err(s.o, o_ref) <= 1e-6 and lse_err(s.lse, lse_ref) <= 1e-6


def test_masked_row_without_keys_is_empty():
    q, k, v = random_inputs(4, 3, 5, 8, 8, torch.float32)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    s = attend(q, k, v, 0.5, mask=mask)
    assert torch.equal(s.o[1], torch.zeros(8)) and s.lse[1] == float("-inf")
    assert torch.isfinite(s.lse[[0, 2]]).all()


def test_batched_leading_dims():
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(2, 3, 4, 16, generator=g), torch.randn(2, 1, 9, 16, generator=g), torch.randn(2, 1, 9, 16, generator=g)
    s = attend(q, k, v, 0.25)
    for b in range(2):
        for h in range(3):
            o_ref, _ = oracle(q[b, h], k[b, 0], v[b, 0], 0.25)
            assert rel_err(s.o[b, h], o_ref) <= 1e-5


def test_duplicate_block_ids_rejected():
    cache = torch.randn(4, 2, 8)
    with pytest.raises(QrouteError, match="duplicate block id 2"):
        partial_attention(torch.randn(1, 8), cache, [0, 2, 1, 2], 1.0, v_dim=8)


def test_out_of_range_block_id_rejected():
    with pytest.raises(QrouteError, match="block id 4 out of range"):
        gather_blocks(torch.randn(4, 2, 8), [1, 4])
    with pytest.raises(QrouteError, match="block id -1 out of range"):
        gather_blocks(torch.randn(4, 2, 8), [-1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_and_inf_inputs_rejected(bad, where):
    q, k, v = random_inputs(6, 2, 4, 8, 8, torch.float32)
    {"q": q, "k": k, "v": v}[where][0, 1] = bad
    with pytest.raises(QrouteError, match=f"^{where} contains"):
        attend(q, k, v, 1.0)


def test_merge_rejects_nan_states_and_mismatched_shapes():
    q, k, v = random_inputs(7, 2, 4, 8, 8, torch.float32)
    good = attend(q, k, v, 1.0)
    with pytest.raises(QrouteError, match="lse contains NaN"):
        merge_states([good, good._replace(lse=torch.tensor([0.0, float("nan")]))])
    with pytest.raises(QrouteError, match="o contains NaN"):
        merge_states([good, good._replace(o=torch.full((2, 8), float("nan")))])
    with pytest.raises(QrouteError, match="o shape"):
        merge_states([good, attend(q[:1], k, v, 1.0)])
    with pytest.raises(QrouteError, match="no states"):
        merge_states([])


def test_mismatched_widths_rejected():
    with pytest.raises(QrouteError, match="q width 8 != k width 9"):
        attend(torch.randn(2, 8), torch.randn(3, 9), torch.randn(3, 4), 1.0)


@pytest.mark.gpu
def test_merge_on_gpu_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    q, k, v = random_inputs(8, 64, 300, 576, 512, torch.bfloat16)
    parts = [(0, 100), (100, 101), (101, 300)]
    states = [attend(q.cuda(), k[a:b].cuda(), v[a:b].cuda(), 0.07) for a, b in parts]
    merged = merge_states(states)
    o_ref, lse_ref = oracle(q, k, v, 0.07)
    assert rel_err(merged.o.cpu(), o_ref) <= 1e-2
    assert lse_err(merged.lse.cpu(), lse_ref) <= 1e-3
