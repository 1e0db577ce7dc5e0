"""load_pretrained: expert layouts, shards, MTP layers, FP8 block scales, dtypes, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

from tests.model.mla_hf import build, save, v3_config  # noqa: E402

from qroute.errors import QrouteError  # noqa: E402
from qroute.model import MLATransformer, ModelConfig, load_pretrained  # noqa: E402
from qroute.model.checkpoint import dequantize_fp8  # noqa: E402

TOKENS = torch.randint(0, 97, (9,), generator=torch.Generator().manual_seed(31))


@pytest.fixture(scope="module")
def hf_model():
    return build(v3_config(), seed=41)


@pytest.fixture(scope="module")
def checkpoint(hf_model, tmp_path_factory) -> Path:
    """What transformers 5 `save_pretrained` writes: per-expert tensors, one file."""
    path = save(hf_model, tmp_path_factory.mktemp("v3"))
    assert any(".mlp.experts.0.gate_proj.weight" in k for k in load_file(path / "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def reference(checkpoint) -> torch.Tensor:
    return load_pretrained(checkpoint).prefill(TOKENS).logits


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a single-file checkpoint, passing its tensor dict through `edit`."""
    shutil.copytree(src, dst)
    tensors = edit(load_file(src / "model.safetensors"))
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_parameter_names_equal_transformers(hf_model):
    ours = MLATransformer(ModelConfig.from_hf(hf_model.config.to_dict()))
    ours.load_state_dict(hf_model.state_dict(), strict=True)  # transformers' in-memory (fused) layout


def test_fused_expert_layout(hf_model, checkpoint, reference, tmp_path):
    shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
    save_file({k: v.contiguous() for k, v in hf_model.state_dict().items()}, tmp_path / "model.safetensors")
    assert "model.layers.1.mlp.experts.gate_up_proj" in load_file(tmp_path / "model.safetensors")
    assert torch.equal(load_pretrained(tmp_path).prefill(TOKENS).logits, reference)


def test_sharded_checkpoint(hf_model, reference, tmp_path):
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    assert torch.equal(load_pretrained(tmp_path).prefill(TOKENS).logits, reference)


def test_mtp_and_unknown_tensors_are_skipped(checkpoint, reference, tmp_path):
    def add_extras(t):
        t["model.layers.3.self_attn.kv_b_proj.weight"] = torch.randn(5, 7)  # MTP layer: index >= num_hidden_layers
        t["model.layers.3.enorm.weight"] = torch.randn(64)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.randn(8)
        return t

    model = load_pretrained(rewrite(checkpoint, tmp_path / "c", add_extras))
    assert torch.equal(model.prefill(TOKENS).logits, reference)


def quantize_fp8(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 style: per 128x128 block, scale_inv = amax / 448, weight = w / scale_inv in e4m3."""
    rows, cols = w.shape
    scale = torch.empty(-(-rows // block), -(-cols // block))
    q = torch.empty_like(w)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            tile = w[i * block : (i + 1) * block, j * block : (j + 1) * block]
            scale[i, j] = tile.abs().max() / 448.0
            q[i * block : (i + 1) * block, j * block : (j + 1) * block] = tile / scale[i, j]
    return q.to(torch.float8_e4m3fn), scale


def test_dequantize_fp8_blocks():
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(3))
    q, scale = quantize_fp8(w)
    assert scale.shape == (3, 2)
    deq = dequantize_fp8(q, scale)
    torch.testing.assert_close(deq[130:140, 150:160], q[130:140, 150:160].float() * scale[1, 1])
    assert (deq - w).abs().max() < 0.07 * w.abs().max()
    with pytest.raises(QrouteError, match="weight_scale_inv shape"):
        dequantize_fp8(q, scale[:2])


def test_fp8_weights_with_block_scales(checkpoint, reference, tmp_path):
    names = ["model.layers.0.self_attn.kv_b_proj.weight", "model.layers.2.self_attn.q_b_proj.weight",
             "model.layers.1.mlp.experts.3.up_proj.weight"]  # fmt: skip
    expected = {}

    def to_fp8(t):
        for name in names:
            t[name], t[name + "_scale_inv"] = quantize_fp8(t[name])
            expected[name] = dequantize_fp8(t[name], t[name + "_scale_inv"])
        return t

    model = load_pretrained(rewrite(checkpoint, tmp_path / "fp8", to_fp8))
    params = dict(model.named_parameters())
    assert torch.equal(params[names[0]], expected[names[0]])
    assert torch.equal(params[names[1]], expected[names[1]])
    assert torch.equal(params["model.layers.1.mlp.experts.gate_up_proj"][3, 32:], expected[names[2]])
    logits = model.prefill(TOKENS).logits
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()


def test_fp8_without_scale_raises(checkpoint, tmp_path):
    name = "model.layers.0.self_attn.kv_b_proj.weight"

    def strip(t):
        t[name] = t[name].to(torch.float8_e4m3fn)
        return t

    with pytest.raises(QrouteError, match=f"'{name}' has no '{name}_scale_inv'"):
        load_pretrained(rewrite(checkpoint, tmp_path / "c", strip))


def test_bfloat16_load(checkpoint, reference):
    model = load_pretrained(checkpoint, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert (model.prefill(TOKENS).logits - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.parametrize(
    "missing", ["model.layers.2.self_attn.kv_a_layernorm.weight", "model.layers.1.mlp.experts.5.down_proj.weight",
                "model.layers.1.mlp.gate.e_score_correction_bias", "lm_head.weight"],
)  # fmt: skip
def test_missing_tensor_is_named(checkpoint, tmp_path, missing):
    def drop(t):
        del t[missing]
        return t

    with pytest.raises(QrouteError, match=f"missing tensor '{missing}'"):
        load_pretrained(rewrite(checkpoint, tmp_path / "c", drop))


def test_wrong_shape_is_named(checkpoint, tmp_path):
    def bad(t):
        t["model.norm.weight"] = torch.ones(65)
        return t

    with pytest.raises(QrouteError, match=r"'model.norm.weight' has shape \(65,\): expected \(64,\)"):
        load_pretrained(rewrite(checkpoint, tmp_path / "c", bad))


def edit_config(src: Path, dst: Path, text: str) -> Path:
    shutil.copytree(src, dst)
    (dst / "config.json").write_text(text)
    return dst


def test_config_not_json(checkpoint, tmp_path):
    with pytest.raises(QrouteError, match="is not valid JSON"):
        load_pretrained(edit_config(checkpoint, tmp_path / "c", "{not json"))


@pytest.mark.parametrize(
    "change, match",
    [({"kv_lora_rank": None}, "kv_lora_rank"), ({"hidden_size": -64}, "hidden_size=-64"),
     ({"moe_intermediate_size": 0}, "moe_intermediate_size=0")],
)  # fmt: skip
def test_malformed_config(checkpoint, tmp_path, change, match):
    cfg = {**json.loads((checkpoint / "config.json").read_text()), **change}
    with pytest.raises(QrouteError, match=match):
        load_pretrained(edit_config(checkpoint, tmp_path / "c", json.dumps(cfg)))


def test_missing_files(checkpoint, tmp_path):
    with pytest.raises(QrouteError, match="config.json not found"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(QrouteError, match="no model.safetensors"):
        load_pretrained(tmp_path)
    index = {"weight_map": {"model.norm.weight": "x.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(QrouteError, match="x.safetensors"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("[1, 2")
    with pytest.raises(QrouteError, match="weight_map"):
        load_pretrained(tmp_path)
