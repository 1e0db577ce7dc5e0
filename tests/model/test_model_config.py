"""ModelConfig: from_hf, from_geometry on every preset, validation errors."""

from __future__ import annotations

import pytest
import torch

from qroute.attention.rope import RopeSpec
from qroute.errors import QrouteError
from qroute.geometry import preset, preset_config, preset_names
from qroute.model import MLATransformer, ModelConfig
from qroute.model.transformer import empty_model
from tests.model.mla_tiny import random_tokens, tiny_config

MLA_PRESETS = [n for n in preset_names() if preset(n).kind == "mla"]
OTHER_PRESETS = [n for n in preset_names() if preset(n).kind != "mla"]


def test_presets_cover_both_kinds():
    assert {"deepseek-v2-lite", "deepseek-v3", "deepseek-v3.2", "glm-5.1"} <= set(MLA_PRESETS)
    assert {"deepseek-v4-flash", "llama-2-7b"} <= set(OTHER_PRESETS)


@pytest.mark.parametrize("name", MLA_PRESETS)
def test_from_hf_reads_real_configs(name):
    cfg, geometry = ModelConfig.from_hf(preset_config(name)), preset(name)
    assert (cfg.num_layers, cfg.num_heads, cfg.kv_lora_rank) == (geometry.layers, geometry.heads, geometry.latent_dim)
    assert cfg.latent_width == geometry.qk_dim == 576
    assert cfg.qk_head_dim == geometry.head_dim and cfg.v_head_dim == geometry.v_head_dim
    assert cfg.is_moe_layer(cfg.num_layers - 1) and not cfg.is_moe_layer(0)


def test_from_hf_router_defaults_and_softmax_scale():
    v2, v3 = ModelConfig.from_hf(preset_config("deepseek-v2-lite")), ModelConfig.from_hf(preset_config("deepseek-v3"))
    assert (v2.scoring_func, v2.topk_method, v2.norm_topk_prob, v2.q_lora_rank) == ("softmax", "greedy", False, None)
    assert (v3.scoring_func, v3.topk_method, v3.n_group, v3.topk_group) == ("sigmoid", "noaux_tc", 8, 4)
    m = 0.1 * 1.0 * torch.log(torch.tensor(40.0)).item() + 1.0  # yarn mscale_all_dim = 1
    assert v3.softmax_scale == pytest.approx(192**-0.5 * m * m)


@pytest.mark.parametrize("name", MLA_PRESETS)
def test_from_geometry_builds_and_runs(name):
    geometry = preset(name)
    rope = RopeSpec.from_hf(preset_config(name), geometry.rope_dim)
    cfg = ModelConfig.from_geometry(geometry, rope=rope)
    assert (cfg.num_heads, cfg.kv_lora_rank) == (geometry.heads, geometry.latent_dim)
    assert cfg.qk_rope_head_dim == geometry.rope_dim
    assert cfg.qk_nope_head_dim == geometry.head_dim - geometry.rope_dim and cfg.v_head_dim == geometry.v_head_dim
    model = MLATransformer.random(cfg, seed=1, dtype=torch.bfloat16)
    out = model.prefill(random_tokens(3, seed=2, vocab=cfg.vocab_size))
    assert out.kv.shape == (2, 3, geometry.qk_dim) and out.logits.shape == (3, cfg.vocab_size)
    step = model.decode(random_tokens(1, seed=3, vocab=cfg.vocab_size), torch.tensor([3]), out.kv)
    assert torch.isfinite(step.logits).all()


def test_from_geometry_heads_override():
    cfg = ModelConfig.from_geometry(preset("deepseek-v3"), heads=4, layers=1, n_routed_experts=0)
    assert cfg.num_heads == 4 and not cfg.is_moe_layer(0)


@pytest.mark.parametrize("name", OTHER_PRESETS)
def test_from_geometry_rejects_other_kinds(name):
    with pytest.raises(QrouteError, match="expected 'mla'"):
        ModelConfig.from_geometry(preset(name))


@pytest.mark.parametrize("name", OTHER_PRESETS)
def test_from_hf_rejects_non_mla(name):
    with pytest.raises(QrouteError, match="kv_lora_rank"):
        ModelConfig.from_hf(preset_config(name))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden_size": -4}, "hidden_size=-4"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0"),
        ({"qk_rope_head_dim": "64"}, "qk_rope_head_dim='64'"),
        ({"v_head_dim": None}, "missing field 'v_head_dim'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"num_experts_per_tok": 300}, "num_experts_per_tok=300"),
        ({"n_group": 7}, "n_group=7"),
        ({"topk_method": "sinkhorn"}, "topk_method='sinkhorn'"),
        ({"rms_norm_eps": 0}, "rms_norm_eps=0"),
    ],
)
def test_from_hf_rejects_malformed_fields(change, match):
    with pytest.raises(QrouteError, match=match):
        ModelConfig.from_hf({**preset_config("deepseek-v3"), **change})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_heads": 0}, "num_heads=0"),
        ({"q_lora_rank": 0}, "q_lora_rank=0"),
        ({"rope": RopeSpec(dim=8)}, "rope.dim=8"),
        ({"topk_group": 3}, "topk_group=3"),
        ({"scoring_func": "relu"}, "scoring_func='relu'"),
        ({"num_experts_per_tok": 5, "topk_group": 1}, "num_experts_per_tok=5"),
        ({"routed_scaling_factor": -1.0}, "routed_scaling_factor=-1.0"),
    ],
)
def test_config_validation(change, match):
    with pytest.raises(QrouteError, match=match):
        tiny_config(**change)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        tiny_config().hidden_size = 3


def test_empty_model_has_the_dtypes_and_device_and_restores_what_it_changed():
    """Parameters in the dtype asked, router correction biases in float32, the default dtype and torch.nn.init as
    they were; a bad dtype is one line."""
    init_normal = torch.nn.init.normal_
    cfg = tiny_config()
    model = empty_model(cfg, torch.bfloat16, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in model.buffers()} <= {torch.float32} and model.device == torch.device("cpu")
    assert torch.get_default_dtype() == torch.float32 and torch.nn.init.normal_ is init_normal
    reference = MLATransformer.random(cfg, seed=4, dtype=torch.bfloat16)
    assert [(n, t.shape, t.dtype) for n, t in reference.state_dict().items()] == [
        (n, t.shape, t.dtype) for n, t in model.state_dict().items()
    ]
    with pytest.raises(QrouteError, match="model dtype torch.int8: expected one of"):
        empty_model(cfg, torch.int8, "cpu")
    assert torch.get_default_dtype() == torch.float32


def test_building_a_model_imports_neither_dynamo_nor_sympy():
    """Built on the meta device and moved, a model cost each process ~3 s of imports (torch._dynamo, sympy) on 2
    cores: every cluster instance builds one at start."""
    import subprocess
    import sys

    code = ("import sys; from tests.model.mla_tiny import tiny_config; from qroute.model import MLATransformer; "
            "MLATransformer.random(tiny_config(), seed=1); print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
