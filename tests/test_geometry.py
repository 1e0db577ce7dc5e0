"""Geometries from presets and HF config.json, and their two coefficients."""

import json

import pytest

from qroute import geometry as geo
from qroute.errors import QrouteError


@pytest.mark.parametrize(
    "name, layers, heads, kv_bf16, kv_fp8, q_row, o_row",
    [
        ("deepseek-v2-lite", 27, 16, 1152, 656, 1152, 1028),
        ("deepseek-v3", 61, 128, 1152, 656, 1152, 1028),
        ("deepseek-v3.2", 61, 128, 1152, 656, 1152, 1028),
        ("glm-5.1", 78, 64, 1152, 656, 1152, 1028),
        ("deepseek-v4-flash", 43, 64, 1024, 592, 1024, 1028),
        ("llama-3.1-70b", 80, 64, 2 * 8 * 128 * 2, 2 * 8 * 128, 256, 260),
        ("llama-2-7b", 32, 32, 2 * 32 * 128 * 2, 2 * 32 * 128, 256, 260),
    ],
)
def test_preset_coefficients(name, layers, heads, kv_bf16, kv_fp8, q_row, o_row):
    g = geo.preset(name)
    bf16, fp8 = g.coefficients("bf16"), g.coefficients("fp8")
    assert (g.layers, g.heads) == (layers, heads)
    assert (bf16.q_row_bytes, bf16.o_row_bytes) == (q_row, o_row)
    assert bf16.kv_token_layer_bytes == kv_bf16 and fp8.kv_token_layer_bytes == kv_fp8
    assert bf16.kv_token_bytes == kv_bf16 * layers
    assert g.source


def test_mla_decode_form_is_576_by_512():
    g = geo.preset("deepseek-v3")
    assert (g.kind, g.qk_dim, g.v_dim, g.latent_dim, g.rope_dim) == ("mla", 576, 512, 512, 64)
    assert g.attn_flops_per_row_token == 2 * (576 + 512)


def test_indexers_of_dsa_models():
    assert geo.preset("deepseek-v3.2").indexer == geo.IndexerSpec(64, 128, 2048)
    assert geo.preset("glm-5.1").indexer == geo.IndexerSpec(32, 128, 2048)
    assert geo.preset("deepseek-v4-flash").indexer == geo.IndexerSpec(64, 128, 512)
    assert geo.preset("deepseek-v3").indexer is None


def test_kinds():
    assert geo.preset("llama-3.1-70b").kind == "gqa"
    assert geo.preset("llama-2-7b").kind == "mha"
    assert geo.preset("deepseek-v4-flash").kind == "mla-shared"


def test_active_parameters_are_plausible():
    # DeepSeek-V3 publishes ~37B activated parameters; per token and layer 2 FLOPs per active weight
    v3 = geo.preset("deepseek-v3")
    active = v3.dense_flops_per_token_layer / 2 * v3.layers
    assert 33e9 < active < 38e9
    lite = geo.preset("deepseek-v2-lite")  # ~2.4B activated incl. embeddings
    assert 1.8e9 < lite.dense_flops_per_token_layer / 2 * lite.layers < 2.5e9


def test_from_transformers_configs_agree_with_presets():
    transformers = pytest.importorskip("transformers")
    v3 = geo.from_hf_config(transformers.DeepseekV3Config().to_dict(), "v3")
    assert v3.coefficients() == geo.preset("deepseek-v3").coefficients()
    glm = geo.from_hf_config(transformers.GlmMoeDsaConfig().to_dict(), "glm")
    assert glm.indexer == geo.IndexerSpec(32, 128, 2048) and glm.layers == 78
    v32 = geo.from_hf_config(transformers.DeepseekV32Config().to_dict(), "v32")
    assert v32.indexer == geo.IndexerSpec(64, 128, 2048)


def test_from_checkpoint_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(geo.preset_config("deepseek-v2-lite")))
    assert geo.resolve(str(tmp_path)).coefficients() == geo.preset("deepseek-v2-lite").coefficients()


def test_with_layers():
    assert geo.preset("deepseek-v3").with_layers(1).coefficients().kv_token_bytes == 1152


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("num_hidden_layers"), "missing field 'num_hidden_layers'"),
        (lambda c: c.update(num_attention_heads=-4), "num_attention_heads=-4"),
        (lambda c: c.update(qk_rope_head_dim="64"), "qk_rope_head_dim='64'"),
        (lambda c: c.update(kv_lora_rank=512, hidden_size=0), "hidden_size=0"),
    ],
)
def test_malformed_config_fields(mutate, message):
    cfg = geo.preset_config("deepseek-v3")
    mutate(cfg)
    with pytest.raises(QrouteError, match=message):
        geo.from_hf_config(cfg)


def test_malformed_config_files(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(QrouteError, match="not valid JSON"):
        geo.resolve(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(QrouteError, match="expected a JSON object"):
        geo.resolve(str(tmp_path))


def test_unknown_model_and_dtype():
    with pytest.raises(QrouteError, match="unknown model 'gpt-9'"):
        geo.resolve("gpt-9")
    with pytest.raises(QrouteError, match="kv dtype 'int4'"):
        geo.preset("deepseek-v3").coefficients("int4")
