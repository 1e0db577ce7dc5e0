"""Attention geometries as data, and the two coefficients the cost model needs from them.

A geometry says how wide a routed query row is, how wide what comes back is, and how many
bytes one token's KV costs over all layers. The paper's point: those two coefficients (the
**routed payload** and fetch's **move-the-cache bytes**) are all a new architecture needs.

Kinds:
    mla         absorbed Multi-head Latent Attention (DeepSeek-V2/V3, GLM-5): per token and
                layer one latent row of `latent_dim` (512) + `rope_dim` (64); a decode query
                row per head is 576 wide, a value row is the 512-wide latent.
    mla-shared  one shared KV head whose `head_dim` includes the rope part (DeepSeek-V4):
                rows `head_dim` wide for both keys and values.
    gqa / mha   grouped-query / multi-head attention, for contrast: per token and layer
                `2 * kv_heads * head_dim` values; a routed row is one query head.

Geometries come from a HuggingFace `config.json` (`from_hf_config`) or from the presets
shipped in `qroute/presets/*.json` (HF-style configs with a `_source` citation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from qroute.errors import QrouteError

BF16 = 2
FP32 = 4
FP8_TILE = 128  # FlashMLA's FP8 latent layout: one float32 scale per 128 latent values
KV_DTYPES = ("bf16", "fp8", "fp32")
ROW_DTYPES = ("bf16", "fp32")
ITEM_BYTES = {"bf16": BF16, "fp32": FP32}


@dataclass(frozen=True)
class IndexerSpec:
    """DSA lightning indexer: `heads` x `head_dim` index queries, `topk` selected entries per query."""

    heads: int
    head_dim: int
    topk: int


@dataclass(frozen=True)
class Coefficients:
    """What the cost model needs from a geometry, in bytes.

    q_row_bytes:  one routed query row (token, head) sent to a holder (bf16 unless asked).
    o_row_bytes:  what comes back per row: output in the row dtype + float32 LSE.
    kv_token_layer_bytes: one token's KV in one layer, in the chosen KV dtype.
    kv_token_bytes: the same over all layers (fetch's move-the-cache bytes per token).
    """

    q_row_bytes: int
    o_row_bytes: int
    kv_token_layer_bytes: int
    kv_token_bytes: int
    kv_dtype: str


@dataclass(frozen=True)
class Geometry:
    """One model's attention geometry (decode form) plus what re-prefill costs per token."""

    name: str
    kind: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int  # per-head qk width before absorption (MLA: nope + rope = 192)
    latent_dim: int  # MLA: kv_lora_rank (512); mla-shared: head_dim - rope_dim; gqa/mha: 0
    rope_dim: int
    v_head_dim: int  # per-head value width before absorption (MLA: 128); gqa/mha: head_dim
    hidden_size: int
    dense_flops_per_token_layer: float  # projections + MLP/MoE (active experts), per token per layer
    attn_flops_per_token_pair: float  # prefill scores + values, per (query, key) pair per layer
    indexer: IndexerSpec | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("mla", "mla-shared", "gqa", "mha"):
            raise QrouteError(f"geometry kind={self.kind!r}: expected mla, mla-shared, gqa or mha")
        for field in ("layers", "heads", "kv_heads", "head_dim", "hidden_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise QrouteError(f"{self.name}: {field}={value!r}: expected an integer >= 1")
        if self.heads % self.kv_heads:
            raise QrouteError(f"{self.name}: heads={self.heads} not divisible by kv_heads={self.kv_heads}")

    @property
    def qk_dim(self) -> int:
        """Width of a decode query/key row: 576 for absorbed MLA, head_dim otherwise."""
        return self.latent_dim + self.rope_dim if self.kind == "mla" else self.head_dim

    @property
    def v_dim(self) -> int:
        """Width of a value row in decode form: the latent for MLA, the head otherwise."""
        if self.kind == "mla":
            return self.latent_dim
        return self.head_dim if self.kind == "mla-shared" else self.v_head_dim

    @property
    def kv_entry_dim(self) -> int:
        """Values stored per token per layer."""
        if self.kind in ("mla", "mla-shared"):
            return self.latent_dim + self.rope_dim
        return 2 * self.kv_heads * self.head_dim

    @property
    def attn_flops_per_row_token(self) -> float:
        """Decode attention FLOPs for one row against one key: scores plus values."""
        return 2.0 * (self.qk_dim + self.v_dim)

    def kv_token_layer_bytes(self, kv_dtype: str = "bf16") -> int:
        """Bytes of one token's KV in one layer (bf16, or FP8 with FlashMLA's layout for MLA)."""
        if kv_dtype not in KV_DTYPES:
            raise QrouteError(f"kv dtype {kv_dtype!r}: expected one of {', '.join(KV_DTYPES)}")
        if kv_dtype in ITEM_BYTES:
            return self.kv_entry_dim * ITEM_BYTES[kv_dtype]
        if self.kind in ("mla", "mla-shared"):  # FP8 latent + float32 scale per tile + bf16 rope
            return self.latent_dim + FP32 * math.ceil(self.latent_dim / FP8_TILE) + BF16 * self.rope_dim
        return self.kv_entry_dim  # per-tensor scale, negligible

    def coefficients(self, kv_dtype: str = "bf16", row_dtype: str = "bf16") -> Coefficients:
        """The routed payload (rows in `row_dtype`) and the move-the-cache bytes (KV in `kv_dtype`)."""
        if row_dtype not in ROW_DTYPES:
            raise QrouteError(f"row dtype {row_dtype!r}: expected one of {', '.join(ROW_DTYPES)}")
        per_layer = self.kv_token_layer_bytes(kv_dtype)
        item = ITEM_BYTES[row_dtype]
        return Coefficients(
            q_row_bytes=self.qk_dim * item,
            o_row_bytes=self.v_dim * item + FP32,
            kv_token_layer_bytes=per_layer,
            kv_token_bytes=per_layer * self.layers,
            kv_dtype=kv_dtype,
        )

    def with_layers(self, layers: int) -> "Geometry":
        """The same geometry with another layer count."""
        from dataclasses import replace

        return replace(self, layers=layers)


# ----------------------------------------------------------------------------- HF config.json


def _get(cfg: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    value = cfg.get(key, default)
    if value is ...:
        raise QrouteError(f"config.json: missing field {key!r}")
    return value


def _int(cfg: Mapping[str, Any], key: str, default: Any = ..., minimum: int = 1) -> int:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QrouteError(f"config.json: {key}={value!r}: expected an integer >= {minimum}")
    return value


def _mlp_active_params(cfg: Mapping[str, Any], layers: int) -> float:
    """Mean active MLP parameters per layer: dense layers, then MoE layers (routed top-k + shared)."""
    hidden = _int(cfg, "hidden_size")
    dense = 3 * hidden * _int(cfg, "intermediate_size", 4 * hidden)
    experts = cfg.get("n_routed_experts") or 0
    if not experts:
        return float(dense)
    moe_inter = _int(cfg, "moe_intermediate_size")
    active = (_int(cfg, "num_experts_per_tok") + (cfg.get("n_shared_experts") or 0)) * 3 * hidden * moe_inter
    moe = active + hidden * experts  # + router
    n_dense = min(cfg.get("first_k_dense_replace") or 0, layers)
    return (n_dense * dense + (layers - n_dense) * moe) / layers


def _mla_attention_params(cfg: Mapping[str, Any], heads: int, nope: int, rope: int, v: int) -> int:
    hidden, kv_rank = _int(cfg, "hidden_size"), _int(cfg, "kv_lora_rank")
    q_rank = cfg.get("q_lora_rank")
    q = hidden * heads * (nope + rope) if not q_rank else hidden * q_rank + q_rank * heads * (nope + rope)
    kv = hidden * (kv_rank + rope) + kv_rank * heads * (nope + v)
    return q + kv + heads * v * hidden


def _indexer(cfg: Mapping[str, Any]) -> IndexerSpec | None:
    if not cfg.get("index_topk"):
        return None
    return IndexerSpec(
        heads=_int(cfg, "index_n_heads"), head_dim=_int(cfg, "index_head_dim"), topk=_int(cfg, "index_topk")
    )


def _mla_from_hf(cfg: Mapping[str, Any], name: str, source: str) -> Geometry:
    layers, heads = _int(cfg, "num_hidden_layers"), _int(cfg, "num_attention_heads")
    nope, rope = _int(cfg, "qk_nope_head_dim"), _int(cfg, "qk_rope_head_dim")
    v = _int(cfg, "v_head_dim")
    attn = _mla_attention_params(cfg, heads, nope, rope, v)
    return Geometry(
        name=name, kind="mla", layers=layers, heads=heads, kv_heads=1, head_dim=nope + rope,
        latent_dim=_int(cfg, "kv_lora_rank"), rope_dim=rope, v_head_dim=v,
        hidden_size=_int(cfg, "hidden_size"),
        dense_flops_per_token_layer=2.0 * (attn + _mlp_active_params(cfg, layers)),
        attn_flops_per_token_pair=2.0 * heads * (nope + rope + v),
        indexer=_indexer(cfg), source=source,
    )  # fmt: skip


def _shared_head_from_hf(cfg: Mapping[str, Any], name: str, source: str) -> Geometry:
    layers, heads, hidden = _int(cfg, "num_hidden_layers"), _int(cfg, "num_attention_heads"), _int(cfg, "hidden_size")
    head_dim, rope = _int(cfg, "head_dim"), _int(cfg, "qk_rope_head_dim")
    q_rank = _int(cfg, "q_lora_rank")
    o_rank = cfg.get("o_lora_rank") or hidden
    attn = hidden * q_rank + q_rank * heads * head_dim + hidden * head_dim + heads * head_dim * o_rank + o_rank * hidden
    return Geometry(
        name=name, kind="mla-shared", layers=layers, heads=heads, kv_heads=1, head_dim=head_dim,
        latent_dim=head_dim - rope, rope_dim=rope, v_head_dim=head_dim, hidden_size=hidden,
        dense_flops_per_token_layer=2.0 * (attn + _mlp_active_params(cfg, layers)),
        attn_flops_per_token_pair=2.0 * heads * 2 * head_dim,
        indexer=_indexer(cfg), source=source,
    )  # fmt: skip


def _gqa_from_hf(cfg: Mapping[str, Any], name: str, source: str) -> Geometry:
    layers, heads, hidden = _int(cfg, "num_hidden_layers"), _int(cfg, "num_attention_heads"), _int(cfg, "hidden_size")
    kv_heads = _int(cfg, "num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o, k, v
    return Geometry(
        name=name, kind="mha" if kv_heads == heads else "gqa", layers=layers, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, latent_dim=0, rope_dim=head_dim, v_head_dim=head_dim, hidden_size=hidden,
        dense_flops_per_token_layer=2.0 * (attn + _mlp_active_params(cfg, layers)),
        attn_flops_per_token_pair=2.0 * heads * 2 * head_dim, source=source,
    )  # fmt: skip


def from_hf_config(config: Mapping[str, Any] | str | Path, name: str | None = None) -> Geometry:
    """Geometry from a HuggingFace `config.json` (a dict, a file, or a checkpoint directory).

    Recognises DeepseekV2/V3/V3.2 and GLM-5 style MLA fields (`kv_lora_rank`,
    `qk_rope_head_dim`, `q_lora_rank`, `index_*`), DeepSeek-V4's shared KV head, and
    Llama-style GQA/MHA.
    """
    if not isinstance(config, Mapping):
        config, name = load_config_json(config), name or Path(config).stem
    if not isinstance(config, Mapping):
        raise QrouteError(f"config.json: top level is {type(config).__name__}: expected a JSON object")
    name = name or config.get("_name_or_path") or config.get("model_type") or "custom"
    source = config.get("_source", "config.json")
    if config.get("kv_lora_rank"):
        return _mla_from_hf(config, name, source)
    if config.get("model_type") == "deepseek_v4" or (config.get("qk_rope_head_dim") and config.get("head_dim")):
        return _shared_head_from_hf(config, name, source)
    return _gqa_from_hf(config, name, source)


def load_config_json(path: str | Path) -> dict[str, Any]:
    """Read a `config.json` file or a directory holding one, with one-line errors."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise QrouteError(f"config.json not found at {str(p)!r}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QrouteError(f"{str(p)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QrouteError(f"{str(p)!r}: top level is {type(data).__name__}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    """Names of the shipped presets, in a stable order."""
    files = resources.files("qroute.presets").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def preset_config(name: str) -> dict[str, Any]:
    """The HF-style config dict of a preset (case-insensitive name)."""
    key = name.lower()
    if key not in preset_names():
        raise QrouteError(f"unknown model {name!r}: expected one of {', '.join(preset_names())} or a checkpoint dir")
    return json.loads(resources.files("qroute.presets").joinpath(f"{key}.json").read_text())


def preset(name: str) -> Geometry:
    """Geometry of a shipped preset."""
    return from_hf_config(preset_config(name), name=name.lower())


def resolve(model: str) -> Geometry:
    """A preset name, or a path to a `config.json` / checkpoint directory."""
    if Path(model).exists():
        return from_hf_config(model)
    return preset(model)
