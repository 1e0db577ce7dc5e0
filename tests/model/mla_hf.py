"""Tiny HuggingFace DeepseekV2/V3 models with random weights, for parity tests (needs transformers)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

YARN = {
    "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128,
    "mscale": 1.0, "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1,
}  # fmt: skip
PLAIN = {"rope_type": "default", "rope_theta": 10000.0}

_COMMON = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
    first_k_dense_replace=1, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=24,
    max_position_embeddings=512,
)  # fmt: skip


def v3_config(**overrides) -> DeepseekV3Config:
    """DeepSeek-V3 layout: q_lora, sigmoid router with groups and correction bias, YaRN, interleaved rope."""
    kw = dict(_COMMON, n_shared_experts=1, n_group=2, topk_group=1, q_lora_rank=32, rope_parameters=YARN,
              routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True)  # fmt: skip
    return DeepseekV3Config(**{**kw, **overrides})


def v2_config(**overrides) -> DeepseekV2Config:
    """DeepSeek-V2(-Lite) layout: plain q_proj, softmax greedy router, two shared experts."""
    kw = dict(_COMMON, n_shared_experts=2, q_lora_rank=None, topk_method="greedy", n_group=1, topk_group=1,
              routed_scaling_factor=1.5, norm_topk_prob=False, rope_parameters=YARN)  # fmt: skip
    return DeepseekV2Config(**{**kw, **overrides})


def build(config, seed: int):
    """An eager-attention float32 HF model with every weight random (norms near 1, biases small)."""
    cls = DeepseekV3ForCausalLM if isinstance(config, DeepseekV3Config) else DeepseekV2ForCausalLM
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "inv_freq" in name:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name:
                tensor.copy_(1.0 + 0.2 * noise)
            elif "e_score_correction_bias" in name:
                tensor.copy_(0.1 * noise)  # large enough to change which experts are chosen
            else:
                tensor.copy_(0.08 * noise)
    return model


def save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def hf_logits(model, tokens: torch.Tensor, cache=None):
    """HF forward of one sequence: (logits [T, V], past_key_values)."""
    with torch.no_grad():
        out = model(tokens.view(1, -1), past_key_values=cache, use_cache=True)
    return out.logits[0].float(), out.past_key_values
