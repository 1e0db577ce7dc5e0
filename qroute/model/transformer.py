"""`MLATransformer`: a DeepSeek-V2/V3 style decoder for prefill, re-prefill and decode.

Parameter names equal HuggingFace's (`model.embed_tokens.weight`,
`model.layers.N.self_attn.kv_b_proj.weight`, `model.layers.N.mlp.gate.weight`,
`model.norm.weight`, `lm_head.weight`, ...). One sequence at a time, no batch dimension:

    forward(tokens [T], positions [T], context) -> StepOutput(logits [T, V] float32, kv [L, T, D])

with D = kv_lora_rank + rope (576 for real models). The model keeps no cache: callers
keep `kv` rows and hand them back through a `Context`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from qroute.errors import QrouteError
from qroute.model.config import ModelConfig
from qroute.model.context import Context, LocalContext
from qroute.model.layers import MLP, MLAttention, MoE, RMSNorm

INIT_STD = 0.02
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class StepOutput(NamedTuple):
    """`logits [T, V]` float32 and the new tokens' cache rows `kv [L, T, D]` (model dtype)."""

    logits: Tensor
    kv: Tensor


class DecoderLayer(nn.Module):
    """Pre-norm attention then pre-norm MLP or MoE, each with a residual."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.self_attn = MLAttention(config)
        dense = not config.is_moe_layer(layer)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.mlp_bias) if dense else MoE(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: Tensor, positions: Tensor, context: Context) -> tuple[Tensor, Tensor]:
        """`h [T, hidden]` -> (`h [T, hidden]`, this layer's cache rows `[T, D]`)."""
        attn, kv = self.self_attn(self.input_layernorm(h), positions, self.layer, context)
        h = h + attn
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class Backbone(nn.Module):
    """Embedding, decoder layers, final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, tokens: Tensor, positions: Tensor, context: Context) -> tuple[Tensor, Tensor]:
        """-> (normalised hidden states `[T, hidden]`, cache rows `[L, T, D]`)."""
        h = self.embed_tokens(tokens)
        rows = []
        for layer in self.layers:
            h, kv = layer(h, positions, context)
            rows.append(kv)
        return self.norm(h), torch.stack(rows)


class MLATransformer(nn.Module):
    """MLA decoder whose attention runs in absorbed form against a `Context` (see module doc)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with lm_head when the config ties them (again after `to_empty`, which unties)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def random(
        cls,
        config: ModelConfig,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        std: float = INIT_STD,
    ) -> "MLATransformer":
        """Deterministic random weights: N(0, std) matrices, unit norms, zero biases, small router biases."""
        model = empty_model(config, torch.float32, device)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_(_init_value(name, tensor.shape, generator, std))
        return model.cast(dtype).eval()

    def cast(self, dtype: torch.dtype) -> "MLATransformer":
        """Cast parameters to `dtype` in place; buffers (router correction biases) stay float32."""
        if dtype not in DTYPES:
            raise QrouteError(f"model dtype {dtype}: expected one of {', '.join(map(str, DTYPES))}")
        for module in self.modules():
            for param in module.parameters(recurse=False):
                if param.dtype != dtype:
                    param.data = param.data.to(dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def local_context(self, prefix: Tensor | None = None) -> LocalContext:
        """A `LocalContext` over `prefix [L, P, D]` (or nothing) with this model's value width."""
        c = self.config
        expected = (c.num_layers, c.latent_width)
        if prefix is not None and (prefix.dim() != 3 or (prefix.shape[0], prefix.shape[-1]) != expected):
            raise QrouteError(f"prefix kv shape {tuple(prefix.shape)}: expected [{c.num_layers}, P, {c.latent_width}]")
        return LocalContext(prefix, self.config.kv_lora_rank)

    @torch.no_grad()
    def forward(self, tokens: Tensor, positions: Tensor, context: Context) -> StepOutput:
        """Logits and cache rows of `tokens [T]` at `positions [T]`, attending `context` plus themselves."""
        tokens, positions = self._check_inputs(tokens, positions)
        h, kv = self.model(tokens, positions, context)
        return StepOutput(self.lm_head(h).float(), kv)

    def prefill(self, tokens: Tensor, positions: Tensor | None = None) -> StepOutput:
        """Forward over no context; positions default to `arange(T)`."""
        if positions is None:
            positions = torch.arange(len(tokens), device=self.device)
        return self.forward(tokens, positions, self.local_context(None))

    def decode(self, tokens: Tensor, positions: Tensor, prefix_kv: Tensor) -> StepOutput:
        """Forward of the new `tokens [T]` after the cached rows `prefix_kv [L, P, D]`."""
        return self.forward(tokens, positions, self.local_context(prefix_kv))

    @torch.no_grad()
    def reprefill(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """`local`: recompute a chunk's cache rows `[L, T, D]` at `positions` (no logits)."""
        tokens, positions = self._check_inputs(tokens, positions)
        return self.model(tokens, positions, self.local_context(None))[1]

    def _check_inputs(self, tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        tokens = torch.as_tensor(tokens, device=self.device)
        positions = torch.as_tensor(positions, device=self.device)
        if tokens.dim() != 1 or tokens.dtype != torch.long or tokens.numel() == 0:
            raise QrouteError(f"tokens shape {tuple(tokens.shape)} dtype {tokens.dtype}: expected [T >= 1] long")
        if positions.shape != tokens.shape or positions.dtype != torch.long:
            got = f"{tuple(positions.shape)} dtype {positions.dtype}"
            raise QrouteError(f"positions shape {got}: expected [{tokens.numel()}] long")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad, vocab = lo if lo < 0 else hi, self.config.vocab_size
            raise QrouteError(f"token id {bad}: expected 0 <= id < vocab_size={vocab}")
        if int(positions.min()) < 0:
            raise QrouteError(f"position {int(positions.min())}: expected >= 0")
        return tokens, positions


def empty_model(config: ModelConfig, dtype: torch.dtype, device: str | torch.device) -> MLATransformer:
    """The model with uninitialised storage on `device`, its parameters in `dtype` and its buffers (router correction
    biases) in float32; every tensor is to be filled afterwards.

    It is built on the device itself with `torch.nn.init` skipped. Built on the meta device and moved with
    `to_empty` (until 2026-11-27), it cost every process about 3 s of CPU in imports (torch 2.13: a meta `normal_`
    imports torch._dynamo and a meta `empty_like` sympy), 4-5 s of a 3-instance cluster's start on 2 cores."""
    if dtype not in DTYPES:
        raise QrouteError(f"model dtype {dtype}: expected one of {', '.join(map(str, DTYPES))}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), _init_skipped():
            model = MLATransformer(config)
    finally:
        torch.set_default_dtype(previous)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.float())
    model.tie_weights()
    return model


@contextmanager
def _init_skipped() -> Iterator[None]:
    """`torch.nn.init`'s in-place initialisers as no-ops (the tensors are filled afterwards), restored on exit."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _init_value(name: str, shape: torch.Size, generator: torch.Generator, std: float) -> Tensor:
    """Initial value of one named tensor (drawn on the CPU so every device gets the same weights)."""
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    if name.endswith("e_score_correction_bias"):
        std = 0.01
    return torch.randn(shape, generator=generator) * std
