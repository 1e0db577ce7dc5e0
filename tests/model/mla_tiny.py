"""Tiny qroute-native MLA configs and models for tests that need no transformers."""

from __future__ import annotations

import torch

from qroute.attention.rope import RopeSpec, YarnScaling
from qroute.model import MLATransformer, ModelConfig

V3_YARN = YarnScaling(factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=1.0)


def tiny_config(yarn: bool = True, **overrides) -> ModelConfig:
    """3 layers (1 dense + 2 MoE), 4 heads, latent 32 + rope 16, V3-style router and YaRN."""
    kw = dict(
        vocab_size=101, hidden_size=64, num_layers=3, num_heads=4, q_lora_rank=24, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=24, intermediate_size=96,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
        first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        rope=RopeSpec(dim=16, yarn=V3_YARN if yarn else None),
    )  # fmt: skip
    return ModelConfig(**{**kw, **overrides})


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> MLATransformer:
    """Random weights with std 0.08 so attention is far from uniform at this width."""
    return MLATransformer.random(tiny_config(**overrides), seed=seed, dtype=dtype, std=0.08)


def random_tokens(n: int, seed: int, vocab: int = 101) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))
