"""Load HuggingFace DeepseekV2/V3 checkpoints (config.json + safetensors) into an `MLATransformer`.

Handles a single `model.safetensors` or shards listed in `model.safetensors.index.json`;
routed experts per expert (`mlp.experts.{e}.gate_proj.weight`, the hub layout and what
transformers 5 `save_pretrained` writes) or fused (`mlp.experts.gate_up_proj [E, 2I, H]`,
`mlp.experts.down_proj [E, H, I]`, transformers 5's in-memory layout); FP8 weights with
DeepSeek-V3's 128x128 `weight_scale_inv` block scales; tied embeddings. Layers with index
>= num_hidden_layers (multi-token-prediction modules) and unknown tensors are skipped.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from qroute.errors import QrouteError
from qroute.geometry import load_config_json
from qroute.model.config import ModelConfig
from qroute.model.transformer import MLATransformer, empty_model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"
FP8_BLOCK = 128
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> MLATransformer:
    """An `MLATransformer` with the weights of the checkpoint directory `path`.

    `dtype` defaults to the checkpoint's `dtype`/`torch_dtype` (float32 if absent or FP8);
    router correction biases stay float32.
    """
    root = Path(path)
    raw = load_config_json(root)
    config = ModelConfig.from_hf(raw)
    model = empty_model(config, dtype or config_dtype(raw), device)
    targets = _targets(model)
    with ExitStack() as stack:
        shards = Shards(root, stack)
        loaded = _load_all(shards, targets, config)
    _check_complete(root, targets, loaded, config)
    return model.eval()


def config_dtype(raw: Mapping[str, Any]) -> torch.dtype:
    """The weights' dtype named in config.json, float32 when absent or not a float type we run."""
    return _DTYPES.get(str(raw.get("dtype") or raw.get("torch_dtype") or "float32"), torch.float32)


def dequantize_fp8(weight: Tensor, scale_inv: Tensor, block: int = FP8_BLOCK) -> Tensor:
    """`weight [out, in]` FP8 times its per-block scale `scale_inv [ceil(out/b), ceil(in/b)]` -> float32."""
    rows, cols = weight.shape
    expected = (-(-rows // block), -(-cols // block))
    if tuple(scale_inv.shape) != expected:
        got = tuple(scale_inv.shape)
        raise QrouteError(f"weight_scale_inv shape {got}: expected {expected} for weight {tuple(weight.shape)}")
    scale = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return weight.float() * scale


class Shards:
    """Every tensor of a checkpoint by name, across shard files (opened lazily, closed by `stack`)."""

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root, self.stack = root, stack
        self.file_of = _weight_map(root)
        self.handles: dict[str, Any] = {}

    def keys(self) -> Iterator[str]:
        return iter(self.file_of)

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def read(self, key: str) -> Tensor:
        """The tensor `key` on the CPU, FP8 weights dequantised to float32."""
        tensor = self._raw(key)
        if tensor.dtype in FP8_DTYPES:
            scale_key = key + SCALE_SUFFIX
            if scale_key not in self:
                raise QrouteError(f"FP8 tensor {key!r} has no {scale_key!r}: expected 128x128 block scales")
            tensor = dequantize_fp8(tensor, self._raw(scale_key))
        return tensor

    def _raw(self, key: str) -> Tensor:
        name = self.file_of[key]
        if name not in self.handles:
            file = self.root / name
            if not file.is_file():
                raise QrouteError(f"shard {str(file)!r} (holding {key!r}) not found")
            self.handles[name] = self.stack.enter_context(_open(file))
        return self.handles[name].get_tensor(key)


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise QrouteError(f"{str(file)!r} is not a readable safetensors file: {exc}") from None


def _weight_map(root: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index or the single file."""
    index, single = root / INDEX_FILE, root / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise QrouteError(f"{str(index)!r}: expected JSON with a 'weight_map' object ({exc})") from None
        if not isinstance(weight_map, dict):
            raise QrouteError(f"{str(index)!r}: weight_map is {type(weight_map).__name__}: expected an object")
        return dict(weight_map)
    if single.is_file():
        with _open(single) as handle:
            return {key: SINGLE_FILE for key in handle.keys()}
    raise QrouteError(f"no {SINGLE_FILE} or {INDEX_FILE} in {str(root)!r}")


# ----------------------------------------------------------------------------- filling the model


def _targets(model: MLATransformer) -> dict[str, Tensor]:
    """Every tensor to load, by HF name (a tied lm_head appears once, as the embedding)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _load_all(shards: Shards, targets: dict[str, Tensor], config: ModelConfig) -> set[str]:
    """Copy every known tensor of `shards` into `targets`; returns the names loaded."""
    loaded: set[str] = set()
    for key in shards.keys():
        if key.endswith(SCALE_SUFFIX) or _beyond_last_layer(key, config):
            continue
        expert = _EXPERT.match(key)
        if expert:
            _load_expert(shards, key, expert, targets, config)
        elif key in targets:
            _copy(targets[key], shards.read(key), key)
        else:
            continue  # unknown tensor (e.g. rotary inv_freq of old checkpoints)
        loaded.add(key)
    return loaded


def _beyond_last_layer(key: str, config: ModelConfig) -> bool:
    match = _LAYER.match(key)
    return bool(match) and int(match[1]) >= config.num_layers


def _load_expert(shards: Shards, key: str, match: re.Match, targets: dict[str, Tensor], config: ModelConfig) -> None:
    """Place one per-expert weight into the fused `gate_up_proj` / `down_proj` tensors."""
    prefix, expert, part = match[1], int(match[2]), match[3]
    fused = targets.get(f"{prefix}.{'down_proj' if part == 'down_proj' else 'gate_up_proj'}")
    if fused is None:
        raise QrouteError(f"tensor {key!r}: the config makes this layer dense: expected no routed experts")
    if expert >= config.n_routed_experts:
        limit = config.n_routed_experts
        raise QrouteError(f"tensor {key!r}: expert {expert} out of range: expected < n_routed_experts={limit}")
    inter = config.moe_intermediate_size
    rows = {"gate_proj": slice(0, inter), "up_proj": slice(inter, 2 * inter), "down_proj": slice(None)}[part]
    _copy(fused[expert, rows], shards.read(key), key)


def _copy(target: Tensor, value: Tensor, key: str) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise QrouteError(f"tensor {key!r} has shape {tuple(value.shape)}: expected {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(value.to(dtype=target.dtype))


def _check_complete(root: Path, targets: Mapping[str, Tensor], loaded: set[str], config: ModelConfig) -> None:
    """Every target was loaded, whole or (experts) piece by piece; else name the first missing tensor."""
    for name in targets:
        if name in loaded:
            continue
        missing = [k for k in _expert_pieces(name, config) if k not in loaded] if _is_fused(name) else [name]
        if missing:
            raise QrouteError(f"checkpoint {str(root)!r}: missing tensor {missing[0]!r}")


def _is_fused(name: str) -> bool:
    return name.endswith(".mlp.experts.gate_up_proj") or name.endswith(".mlp.experts.down_proj")


def _expert_pieces(fused_name: str, config: ModelConfig) -> list[str]:
    """Per-expert names that together make up the fused tensor `fused_name`."""
    prefix, fused = fused_name.rsplit(".", 1)
    parts = ("down_proj",) if fused == "down_proj" else ("gate_proj", "up_proj")
    return [f"{prefix}.{e}.{p}.weight" for e in range(config.n_routed_experts) for p in parts]
