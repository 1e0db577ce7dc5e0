"""RoPE shift identity: route (query shifted by -d) = fetch (keys spliced by +d) = re-prefill at p + d."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.attention import RopeSpec, YarnScaling, attend, embed, rotate, shift_query, splice
from qroute.attention.rope import to_half_layout
from qroute.errors import QrouteError

# DeepSeek-V3's published YaRN settings (config.json `rope_scaling`)
DEEPSEEK_V3_YARN = RopeSpec(dim=64, theta=10000.0, yarn=YarnScaling(40.0, 4096, 32, 1, 1.0, 1.0))
DEEPSEEK_V2_LITE_YARN = RopeSpec(dim=64, theta=10000.0, yarn=YarnScaling(40.0, 4096, 32, 1, 0.707, 0.707))
PLAIN = RopeSpec(dim=64, theta=10000.0)
SPECS = {"plain": PLAIN, "v3-yarn": DEEPSEEK_V3_YARN, "v2-lite-yarn": DEEPSEEK_V2_LITE_YARN}


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def mla_rows(seed, tokens, rows, latent=512, rope=64):
    """Random absorbed-MLA pieces: key latents, raw key/query rope parts, absorbed query latents."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(tokens, latent, generator=g),
        torch.randn(tokens, rope, generator=g),
        torch.randn(rows, latent, generator=g) * 0.05,
        torch.randn(rows, rope, generator=g),
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    tokens=st.integers(1, 40),
    start=st.integers(0, 100_000),
    offset=st.integers(-50_000, 100_000),
    gap=st.integers(0, 5_000),
    spec_name=st.sampled_from(sorted(SPECS)),
)
def test_route_equals_fetch_equals_reprefill(seed, tokens, start, offset, gap, spec_name):
    spec = SPECS[spec_name]
    if start + offset < 0:
        offset = -start
    latent, k_raw, q_lat, q_raw = mla_rows(seed, tokens, rows=6)
    canonical = torch.arange(tokens) + start
    reused = canonical + offset
    query_pos = torch.full((6,), int(reused[-1]) + 1 + gap)
    scale = 192**-0.5 * spec.softmax_mscale**2

    def state(k_rope, q_rope):
        keys = torch.cat((latent, k_rope), dim=-1)
        return attend(torch.cat((q_lat, q_rope), dim=-1), keys, latent, scale)

    q_rope = embed(q_raw, query_pos, spec)
    stored = embed(k_raw, canonical, spec)  # the holder's keys, prefilled at canonical positions
    reprefill = state(embed(k_raw, reused, spec), q_rope)  # local: prefill the chunk at p + d
    route = state(stored, shift_query(q_rope, offset, spec))
    fetch = state(splice(stored, offset, spec), q_rope)
    for got in (route, fetch):
        assert rel_err(got.o, reprefill.o) <= 1e-5
        assert float((got.lse - reprefill.lse).abs().max()) <= 1e-5 * max(1.0, float(reprefill.lse.abs().max()))


@settings(max_examples=30, deadline=None)
@given(p=st.integers(-10**6, 10**6), d=st.integers(-10**6, 10**6), seed=st.integers(0, 2**31 - 1))
def test_rotations_compose(p, d, seed):
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed))
    assert rel_err(rotate(rotate(x, p, DEEPSEEK_V3_YARN), d, DEEPSEEK_V3_YARN), rotate(x, p + d, DEEPSEEK_V3_YARN)) < 1e-5
    assert rel_err(rotate(rotate(x, p, PLAIN), -p, PLAIN), x) < 1e-5


def test_splice_works_on_all_layers_at_once():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(5, 7, 64, generator=g)  # [layers, tokens, rope]
    spliced = splice(k, 33, PLAIN)
    for layer in range(5):
        assert torch.allclose(spliced[layer], rotate(k[layer], 33, PLAIN))


def test_rotation_preserves_norm_and_dtype():
    x = torch.randn(4, 64).to(torch.bfloat16)
    y = rotate(x, 1234, DEEPSEEK_V3_YARN)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float().norm(dim=-1), x.float().norm(dim=-1), rtol=2e-2)


def test_interleaved_projection_is_deinterleaved():
    x = torch.arange(8.0)
    assert to_half_layout(x).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    spec = RopeSpec(dim=8, interleave=True)
    assert torch.allclose(embed(x, torch.tensor(0), spec), to_half_layout(x))


def test_yarn_attention_factor_and_softmax_mscale():
    # DeepSeek-V2-Lite: mscale == mscale_all_dim, so cos/sin are unscaled and softmax gets m^2
    assert DEEPSEEK_V2_LITE_YARN.attention_factor == pytest.approx(1.0)
    m = 0.1 * 0.707 * math.log(40) + 1
    assert DEEPSEEK_V2_LITE_YARN.softmax_mscale == pytest.approx(m)
    spec = RopeSpec(dim=64, yarn=YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=0.5))
    assert spec.attention_factor == pytest.approx((0.1 * math.log(40) + 1) / (0.05 * math.log(40) + 1))


def test_yarn_frequencies_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.DeepseekV3Config(
        qk_rope_head_dim=64,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32, "beta_slow": 1,
                         "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096},
    )  # fmt: skip
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    spec = RopeSpec.from_hf(config.to_dict(), dim=64)
    assert torch.allclose(spec.inv_freq().float(), inv_freq, rtol=1e-6)
    assert spec.attention_factor == pytest.approx(factor)


def test_from_hf_reads_old_and_new_field_styles():
    old = {"rope_theta": 5e5, "rope_scaling": {"type": "yarn", "factor": 8, "original_max_position_embeddings": 1024}}
    new = {"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8, "original_max_position_embeddings": 1024}}
    assert RopeSpec.from_hf(old, 64) == RopeSpec.from_hf(new, 64)
    assert RopeSpec.from_hf({}, 64) == RopeSpec(dim=64)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"rope_scaling": {"type": "longrope"}}, "rope_type='longrope'"),
        ({"rope_scaling": {"type": "yarn", "factor": -2, "original_max_position_embeddings": 4}}, "factor=-2"),
        ({"rope_theta": 0.5}, "rope_theta=0.5"),
    ],
)
def test_bad_rope_config_rejected(config, message):
    with pytest.raises(QrouteError, match=message):
        RopeSpec.from_hf(config, 64)


def test_odd_rope_dim_rejected():
    with pytest.raises(QrouteError, match="rope dim=63"):
        RopeSpec(dim=63)
