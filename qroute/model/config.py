"""`ModelConfig`: the shape of a DeepSeek-V2/V3 style MLA transformer, validated on construction.

Built from a HuggingFace `config.json` (`from_hf`), or from an `mla` attention geometry
(`from_geometry`: the real attention shapes, everything else shrunk, for tests and demos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from qroute.attention.rope import RopeSpec
from qroute.errors import QrouteError, non_negative_int, positive_int
from qroute.geometry import Geometry, load_config_json

SCORING_FUNCS = ("softmax", "sigmoid")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
_POSITIVE = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "moe_layer_freq",
    "n_group", "topk_group",
)  # fmt: skip
_NON_NEGATIVE = ("n_routed_experts", "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and options of an MLA transformer (names follow DeepseekV2/V3 `config.json`).

    `n_routed_experts == 0` means a dense MLP in every layer; otherwise layer `i` is MoE when
    `i >= first_k_dense_replace and i % moe_layer_freq == 0`. `rope` defaults to plain RoPE
    over `qk_rope_head_dim` with theta 10000.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    intermediate_size: int
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    rope: RopeSpec | None = field(default=None)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            positive_int(name, getattr(self, name))
        for name in _NON_NEGATIVE:
            non_negative_int(name, getattr(self, name))
        if self.q_lora_rank is not None:
            positive_int("q_lora_rank", self.q_lora_rank)
        _positive_float("rms_norm_eps", self.rms_norm_eps)
        if self.rope is None:
            object.__setattr__(self, "rope", RopeSpec(dim=self.qk_rope_head_dim))
        if self.rope.dim != self.qk_rope_head_dim:
            raise QrouteError(f"rope.dim={self.rope.dim}: expected qk_rope_head_dim={self.qk_rope_head_dim}")
        if self.n_routed_experts:
            self._check_moe()

    def _check_moe(self) -> None:
        experts, k = self.n_routed_experts, self.num_experts_per_tok
        positive_int("moe_intermediate_size", self.moe_intermediate_size)
        _positive_float("routed_scaling_factor", self.routed_scaling_factor)
        if not 1 <= k <= experts:
            raise QrouteError(f"num_experts_per_tok={k!r}: expected 1 <= k <= n_routed_experts={experts}")
        if self.scoring_func not in SCORING_FUNCS:
            raise QrouteError(f"scoring_func={self.scoring_func!r}: expected one of {', '.join(SCORING_FUNCS)}")
        if self.topk_method not in TOPK_METHODS:
            raise QrouteError(f"topk_method={self.topk_method!r}: expected one of {', '.join(TOPK_METHODS)}")
        if experts % self.n_group:
            raise QrouteError(f"n_group={self.n_group}: expected a divisor of n_routed_experts={experts}")
        if self.topk_group > self.n_group:
            raise QrouteError(f"topk_group={self.topk_group}: expected <= n_group={self.n_group}")
        if self.topk_method != "greedy" and k > self.topk_group * (experts // self.n_group):
            groups = self.topk_group
            raise QrouteError(f"num_experts_per_tok={k}: expected <= experts in the topk_group={groups} groups")

    # ------------------------------------------------------------------ derived

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width before absorption: nope + rope (192 for real models)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_width(self) -> int:
        """Width of one cached latent row and one absorbed query row: kv_lora_rank + rope (576)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """DeepSeek's softmax scale `(nope + rope)**-0.5 * m**2`, m the YaRN mscale."""
        return self.qk_head_dim**-0.5 * self.rope.softmax_mscale**2

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` has a routed MoE block (else a dense SiLU-gated MLP)."""
        return bool(self.n_routed_experts) and layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0

    def to_hf(self) -> dict[str, Any]:
        """The config as HuggingFace DeepseekV3-style `config.json` fields (rope as `rope_parameters`)."""
        r = self.rope
        rope: dict[str, Any] = {"rope_type": "default" if r.yarn is None else "yarn", "rope_theta": r.theta}
        if r.yarn is not None:
            rope.update({k: v for k, v in vars(r.yarn).items() if v is not None})
        return {
            "model_type": "deepseek_v3", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "q_lora_rank": self.q_lora_rank, "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim, "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim, "intermediate_size": self.intermediate_size,
            "n_routed_experts": self.n_routed_experts or None, "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok, "moe_intermediate_size": self.moe_intermediate_size,
            "first_k_dense_replace": self.first_k_dense_replace, "moe_layer_freq": self.moe_layer_freq,
            "scoring_func": self.scoring_func, "topk_method": self.topk_method, "n_group": self.n_group,
            "topk_group": self.topk_group, "norm_topk_prob": self.norm_topk_prob,
            "routed_scaling_factor": self.routed_scaling_factor, "rms_norm_eps": self.rms_norm_eps,
            "rope_interleave": r.interleave, "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings, "attention_bias": self.attention_bias,
        }  # fmt: skip

    def geometry(self, name: str = "model") -> Geometry:
        """This model's attention geometry (for the cost model)."""
        from qroute.geometry import from_hf_config

        return from_hf_config(self.to_hf(), name=name)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | str | Path) -> "ModelConfig":
        """From a DeepseekV2/V3 `config.json` (dict, file or checkpoint directory)."""
        if not isinstance(config, Mapping):
            config = load_config_json(config)
        _require_mla(config)
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise QrouteError(f"config.json: hidden_act={act!r}: expected 'silu'")
        rope = RopeSpec.from_hf(config, _hf_int(config, "qk_rope_head_dim"))
        return cls(**_hf_fields(config), **_hf_moe_fields(config), rope=rope)

    @classmethod
    def from_geometry(
        cls,
        geometry: Geometry,
        layers: int = 2,
        hidden_size: int = 256,
        vocab_size: int = 256,
        heads: int | None = None,
        n_routed_experts: int = 4,
        num_experts_per_tok: int = 2,
        n_shared_experts: int = 1,
        q_lora_rank: int | None = None,
        rope: RopeSpec | None = None,
    ) -> "ModelConfig":
        """Keep the attention geometry of an `mla` geometry, shrink the rest.

        latent (kv_lora_rank), rope, nope (head_dim - rope), v_head_dim and heads (unless
        `heads` is given) come from `geometry`; MoE layers start at index 1 when `layers > 1`.
        """
        if geometry.kind != "mla":
            raise QrouteError(f"geometry {geometry.name!r} has kind {geometry.kind!r}: expected 'mla'")
        return cls(
            vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers,
            num_heads=geometry.heads if heads is None else heads, q_lora_rank=q_lora_rank,
            kv_lora_rank=geometry.latent_dim, qk_nope_head_dim=geometry.head_dim - geometry.rope_dim,
            qk_rope_head_dim=geometry.rope_dim, v_head_dim=geometry.v_head_dim,
            intermediate_size=2 * hidden_size, n_routed_experts=n_routed_experts,
            n_shared_experts=n_shared_experts, num_experts_per_tok=num_experts_per_tok if n_routed_experts else 0,
            moe_intermediate_size=max(hidden_size // 2, 1), first_k_dense_replace=1 if layers > 1 else 0,
            rope=rope,
        )  # fmt: skip


def _positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise QrouteError(f"{name}={value!r}: expected a number > 0")


# ----------------------------------------------------------------------------- config.json


def _require_mla(cfg: Mapping[str, Any]) -> None:
    if not cfg.get("kv_lora_rank"):
        kind = cfg.get("model_type", "unknown")
        raise QrouteError(f"config.json: model_type {kind!r} has no kv_lora_rank: expected an MLA (DeepseekV2/V3)")


def _hf_int(cfg: Mapping[str, Any], key: str, default: Any = ..., minimum: int = 1) -> int:
    """An integer field of `config.json`; null counts as absent."""
    value = cfg.get(key)
    value = default if value is None else value
    if value is ...:
        raise QrouteError(f"config.json: missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QrouteError(f"config.json: {key}={value!r}: expected an integer >= {minimum}")
    return value


def _hf_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    q_rank = cfg.get("q_lora_rank")
    return dict(
        vocab_size=_hf_int(cfg, "vocab_size"), hidden_size=_hf_int(cfg, "hidden_size"),
        num_layers=_hf_int(cfg, "num_hidden_layers"), num_heads=_hf_int(cfg, "num_attention_heads"),
        q_lora_rank=_hf_int(cfg, "q_lora_rank") if q_rank is not None and q_rank != 0 else None,
        kv_lora_rank=_hf_int(cfg, "kv_lora_rank"), qk_nope_head_dim=_hf_int(cfg, "qk_nope_head_dim"),
        qk_rope_head_dim=_hf_int(cfg, "qk_rope_head_dim"), v_head_dim=_hf_int(cfg, "v_head_dim"),
        intermediate_size=_hf_int(cfg, "intermediate_size"),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
    )  # fmt: skip


def _hf_moe_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    experts = _hf_int(cfg, "n_routed_experts", 0, minimum=0)
    if not experts:
        return {}
    v2 = cfg.get("model_type") == "deepseek_v2"  # V2 defaults: softmax + greedy; V3 and later: sigmoid + noaux_tc
    return dict(
        n_routed_experts=experts, n_shared_experts=_hf_int(cfg, "n_shared_experts", 0, minimum=0),
        num_experts_per_tok=_hf_int(cfg, "num_experts_per_tok"),
        moe_intermediate_size=_hf_int(cfg, "moe_intermediate_size"),
        first_k_dense_replace=_hf_int(cfg, "first_k_dense_replace", 0, minimum=0),
        moe_layer_freq=_hf_int(cfg, "moe_layer_freq", 1),
        scoring_func=cfg.get("scoring_func") or ("softmax" if v2 else "sigmoid"),
        topk_method=cfg.get("topk_method") or ("greedy" if v2 else "noaux_tc"),
        n_group=_hf_int(cfg, "n_group", 1), topk_group=_hf_int(cfg, "topk_group", 1),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", not v2)),
        routed_scaling_factor=cfg.get("routed_scaling_factor", 1.0),
    )  # fmt: skip
